"""Reusable stackmon widgets: each renders the frozen model values it is given (no I/O, no
timers), carries its own DEFAULT_CSS, and shows untrusted text as plain text, never markup.
How bad a figure is comes from the core's health model (stackmon.health), never from a
threshold of a widget's own."""

from widgets._fmt import Severity
from widgets.clients_panel import CauseHistory, ClientsPanel
from widgets.gauge import Gauge, GaugeItem, GaugeList, fd_items, gauge_severity, listen_queue_items
from widgets.history import History
from widgets.host_header import HostHeader, host_reading
from widgets.nginx_panel import NginxPanel
from widgets.worker_list import WorkerList

__all__ = [
    "CauseHistory",
    "ClientsPanel",
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
    "host_reading",
    "listen_queue_items",
]
