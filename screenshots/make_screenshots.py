"""Make the README's screenshots from the real app on the real demo stack.

    .venv/bin/python screenshots/make_screenshots.py

Starts the demo stack (real uWSGI + nginx) with its traffic, waits until requests are stuck,
then drives the app headless (Textual's Pilot) and saves SVG screenshots: the main view, a
worker's detail, and an unreachable host (a second tab pointed at a closed port). With
`rsvg-convert` installed (Debian: librsvg2-bin, fonts-firacode) each SVG is also turned into a
PNG. Everything started is stopped at the end.

Textual's SVG writes every space as &#160; in runs of <text> with a textLength; rsvg-convert
drew a segment's leading no-break spaces with no width, so the PNGs lost the spaces between
segments (`web-1CRIT 2`, `2.0.31master`). The SVG is given plain spaces under
xml:space="preserve" before it is converted, which renders as the terminal shows it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stackmon.addresses import parse_stats_address
from stackmon.config import HostConfig, Settings, Targets
from stackmon.demo.launcher import Stack
from stackmon.demo.traffic import TrafficThread
from tui.app import StackmonApp

HERE = Path(__file__).resolve().parent
SIZE = (140, 40)


async def shoot(stack: Stack) -> list[Path]:
    hosts = (
        HostConfig(name="web-1", uwsgi=(parse_stats_address(stack.stats_address),),
                   nginx=stack.nginx_status_url),
        HostConfig(name="web-2", uwsgi=(parse_stats_address("127.0.0.1:1"),),
                   nginx="http://127.0.0.1:1/nginx_status"),
    )
    app = StackmonApp(Targets(hosts=hosts, settings=Settings(slow=5, critical=20)))
    out: list[Path] = []
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(8)  # a few polls: history, rates
        out.append(Path(app.save_screenshot("main.svg", str(HERE))))
        await pilot.press("w")  # the worst worker (the cursor starts there, w makes sure)
        await pilot.press("enter")
        await pilot.pause(1.5)
        out.append(Path(app.save_screenshot("worker-detail.svg", str(HERE))))
        await pilot.press("escape", "right_square_bracket")
        await pilot.pause(4)
        out.append(Path(app.save_screenshot("unreachable.svg", str(HERE))))
        await pilot.press("left_square_bracket", "question_mark")
        await pilot.pause(0.5)
        out.append(Path(app.save_screenshot("help.svg", str(HERE))))
    return out


def keep_spaces(svg: Path) -> None:
    """No-break spaces to plain spaces that the renderer must keep (see the docstring)."""
    text = svg.read_text(encoding="utf-8").replace("&#160;", " ")
    text = re.sub(r"<svg\b(?![^>]*xml:space)", '<svg xml:space="preserve"', text, count=1)
    svg.write_text(text, encoding="utf-8")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="stackmon-shots-"))
    stack = Stack.start(workdir, workers=4, threads=2, listen=32, mercy=15, name="demo")
    traffic = TrafficThread(stack.base_url, capacity=stack.capacity, listen=32,
                            stats_address=stack.stats_address,
                            first_burst=18.0, seed=7).start() if stack.base_url else None
    try:
        time.sleep(22)  # stuck requests past "slow", and the first queue burst under way
        svgs = asyncio.run(shoot(stack))
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    converter = shutil.which("rsvg-convert")
    for svg in svgs:
        keep_spaces(svg)
        if converter:
            png = svg.with_suffix(".png")
            subprocess.run([converter, "-o", str(png), str(svg)], check=True)
            svg.unlink()
            print(png)
        else:
            print(f"{svg} (install librsvg2-bin for PNG)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
