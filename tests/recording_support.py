"""Reading a recording the way stackmon does NOT: sqlite3 and zstandard only, as independent
truth for the recorder's, the replay's and the history reader's tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import zstandard


def independent_docs(path: Path) -> list[dict[str, Any]]:
    """Every poll of the recording at `path`, decoded in id order (keyframes whole, the others
    as deltas against the poll before: the format docs/contracts.md describes)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out: list[dict[str, Any]] = []
    previous = b""
    try:
        for kind, data in db.execute("SELECT kind, data FROM poll ORDER BY id"):
            if kind == 0:
                raw = zstandard.ZstdDecompressor().decompress(data)
            else:
                d = zstandard.ZstdCompressionDict(previous,
                                                  dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                raw = zstandard.ZstdDecompressor(dict_data=d).decompress(data)
            previous = raw
            out.append(json.loads(raw))
    finally:
        db.close()
    return out


def stored_polls(path: Path) -> int:
    """How many polls the recording at `path` holds now (0 while it is not readable yet)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM poll").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0
