"""SVG snapshots of the widgets together, at 80x24, with fixed data and a fixed clock.

Update with `pytest tests/test_widgets_snapshots.py --snapshot-update` only after reading the
diff report: a changed snapshot is a changed screen for the person on call.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.pilot import Pilot

from stackmon.model import (
    FdReport,
    KernelCounters,
    Listener,
    ProcessFds,
    Socket,
    SourceError,
    SystemFds,
)
from tests.test_widgets import NOW, host, instance, nginx, req, worker
from widgets import (
    GaugeList,
    History,
    HostHeader,
    NginxPanel,
    WorkerList,
    fd_items,
    listen_queue_items,
)

WORKERS = [
    worker(1, req(0, "/api/orders?page=2", 3), req(1, "/report/export.csv", 14, "slow"),
           req(2, "/hang/gamma-[b]x[/b]", 187, "critical", method="POST",
               remote="203.0.113.9")),
    worker(2),
    worker(3, pid=0, status="idle", served=0),
    worker(4, req(0, "", None, method="", remote=""), exceptions=2, harakiri=1),
    *(worker(i, req(0, f"/static/{i}.js", i)) for i in range(5, 12)),
]

HOST = host(
    name="web-1",
    uwsgi=(instance(WORKERS, sockets=[Socket("/run/app.sock", "uwsgi", 93, 100,
                                             source="kernel")], queue=93),),
    nginx=nginx(dropped=3, rps=41.5),
    listeners=(Listener("0.0.0.0:80", "tcp", "nginx", 2, 511),),
    fds=FdReport(SystemFds(3104, 9223372036854775807),
                 (ProcessFds(4300, "uwsgi-worker", 37, 1024),
                  ProcessFds(4301, "uwsgi-worker", 751, 1024),
                  ProcessFds(4242, "uwsgi-master", 18, 1024))),
    kernel=KernelCounters(4096, 0, 0),
    errors=(SourceError("kernel", "sock_diag: permission denied"),),
)


class Dashboard(App[None]):
    CSS = """
    #gauges { height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield HostHeader(HOST, 41.5)
        yield NginxPanel(HOST.nginx)
        yield GaugeList(listen_queue_items(HOST), id="queues")
        yield GaugeList(fd_items(HOST.fds), id="fds")
        yield History(id="history")
        yield WorkerList(id="workers")

    def on_mount(self) -> None:
        history = self.query_one(History)
        for i in range(40):
            history.push(queue=min(93, i * 3), busy=min(11, i // 3), rps=None if i == 0
                         else 40 + (i % 7))
        workers = self.query_one(WorkerList)
        workers.set_workers(HOST.uwsgi[0].workers, NOW)
        workers.focus()


def test_dashboard_snapshot(snap_compare: object) -> None:
    async def move_cursor(pilot: Pilot[None]) -> None:
        await pilot.press("down")

    assert snap_compare(Dashboard(), terminal_size=(80, 24),  # type: ignore[operator]
                        run_before=move_cursor)
