"""Reusable stackmon widgets: each renders the frozen model values it is given (no I/O, no
timers), carries its own DEFAULT_CSS, and shows untrusted text as plain text, never markup."""

from widgets._fmt import Severity
from widgets.gauge import Gauge, GaugeItem, GaugeList, fd_items, gauge_severity, listen_queue_items
from widgets.history import History
from widgets.host_header import HostHeader, host_state
from widgets.nginx_panel import NginxPanel
from widgets.worker_list import WorkerList

__all__ = [
    "Gauge",
    "GaugeItem",
    "GaugeList",
    "History",
    "HostHeader",
    "NginxPanel",
    "Severity",
    "WorkerList",
    "fd_items",
    "gauge_severity",
    "host_state",
    "listen_queue_items",
]
