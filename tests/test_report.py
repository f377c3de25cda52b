"""The incident report on a constructed recording: figures, endings, self-contained output."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from stackmon.cli import main
from stackmon.logs.host import LogSummary
from stackmon.record.report import analyse
from stackmon.record.store import Recorder, Recording
from tests.recording_support import independent_docs
from tests.test_replay_app import STUCK, T0, make_polls


def recording(tmp_path: Path) -> Path:
    """The replay test's polls, with 502s counted from poll 12 (3 a poll, queue_full) and a
    kill of worker 4's pid by stackmon at T0 + 19.5 in the audit log."""
    audit = tmp_path / "audit.log"
    audit.write_text("")
    rec = Recorder(tmp_path / "r.db", audit_path=audit, settings={"slow": 5.0})
    for i, snap in enumerate(make_polls()):
        n = max(0, i - 11) * 3
        logs = replace(snap.logs or LogSummary(T0, 60, None, (), ()),
                       status_totals=(("502", n), ("503", 0), ("504", 0)),
                       upstream_totals=(("queue_full", "unix:/x.sock", n),))
        rec.write(replace(snap, logs=logs))
        if i == 19:
            pid = snap.uwsgi[0].workers[3].pid
            audit.write_text(json.dumps({
                "time": "x", "epoch": T0 + 19.5, "user": "alice", "host": "web-1",
                "action": "kill KILL", "worker_id": 4, "target_pid": pid, "outcome": "ok",
                "message": "SIGKILL sent", "request": {"uri": STUCK}}) + "\n")
    rec.close()
    return tmp_path / "r.db"


def test_figures_match_the_recording(tmp_path: Path) -> None:
    path = recording(tmp_path)
    docs = independent_docs(path)
    incident = analyse(Recording.open(path))
    (host,) = incident.hosts
    busy = [sum(1 for w in d["uwsgi"][0]["workers"] if w["status"] == "busy"
                or any(c["in_request"] for c in w["cores"])) for d in docs]
    assert host.busy == busy and max(busy) == 4
    assert host.status_total == {"502": docs[-1]["status_totals"]["502"], "503": 0, "504": 0}
    assert host.errors_total == {"queue_full": 54}
    assert host.errors_per_s["queue_full"][15] == 3.0
    stuck = {s.uri: s for s in incident.stuck}
    report = stuck[STUCK]
    assert (report.first_seen, report.last_seen, report.worker) == (T0 + 15, T0 + 19, 4)
    assert report.longest_s == 9.0 and report.ended == "killed"
    seen = [d["taken_at"] for d in docs for w in d["uwsgi"][0]["workers"]
            for r in w["requests_in_flight"] if r["uri"] == STUCK and r["running_s"] >= 5]
    assert (min(seen), max(seen)) == (report.first_seen, report.last_seen)
    summary = " ".join(incident.summary())
    assert "peak busy workers 4/4" in summary and "502: 54" in summary
    assert "kill KILL ok" in summary


def test_html_is_self_contained_and_md_for_tickets(tmp_path: Path) -> None:
    path = recording(tmp_path)
    out = tmp_path / "incident.html"
    assert main(["report", str(path), "--out", str(out), "--from", "+2s"]) == 0
    page = out.read_text()
    assert page.count("<svg") == 5
    assert not re.search(r"<script|<link|<img|src=|url\((?!#)|@import", page)
    assert "https://" not in page and "http://" not in page.replace(
        "http://www.w3.org/", "")
    assert STUCK in page and "killed" in page and "harakiri" in page
    assert "2027-01-15 08:00:02" in page or "08:00:02" in page  # --from applied
    assert (out.stat().st_mode & 0o077) == 0
    md = tmp_path / "incident.md"
    assert main(["report", str(path), "--out", str(md)]) == 0
    text = md.read_text()
    assert "| web-1 | GET " + STUCK in text and "| killed |" in text


def test_bad_files_are_one_line(tmp_path: Path, capsys: object) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00garbage" * 100)
    assert main(["report", str(junk), "--out", str(tmp_path / "x.html")]) == 2
    assert main(["replay", str(junk)]) == 2
    assert main(["report", str(tmp_path / "nope.db"), "--out", "-"]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert err.count("\n") == 3 and "Traceback" not in err
    assert "not a stackmon recording" in err and "no such recording" in err
