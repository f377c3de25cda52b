"""The reference for bench_tui_cpu.py: the simplest Textual worker table (about 30 lines).

Header, a DataTable cleared and refilled from the uWSGI stats every second, Footer.
"""

import json
import socket
import sys

from textual.app import App
from textual.widgets import DataTable, Footer, Header


def fetch(addr: str) -> dict:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        return json.loads(b"".join(iter(lambda: s.recv(65536), b"")))


class Simple(App):
    def compose(self):
        yield Header()
        yield DataTable()
        yield Footer()

    def on_mount(self):
        self.query_one(DataTable).add_columns("wid", "pid", "status", "requests", "exc", "avg")
        self.set_interval(1, self.refill)

    def refill(self):
        table = self.query_one(DataTable)
        table.clear()
        for w in fetch(sys.argv[1])["workers"]:
            table.add_row(w["id"], w["pid"], w["status"], w["requests"], w["exceptions"],
                          w["avg_rt"])


if __name__ == "__main__":
    Simple().run()
