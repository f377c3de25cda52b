"""One interface to a host, whether it is this machine or a machine behind a stackmon agent.

Everything that talks to a host (the poller, the TUI, the CLI's actions, the doctor) holds a
`Host` and calls its methods: poll, current_instance, kill, reload, follow. `open_host` is the
only place that looks at `HostConfig.agent` to choose the implementation; a new capability
(a stack trace, history) is added to `Host` once and implemented twice, never as an
`if host.agent` branch in a caller.
"""

from stackmon.hosts.base import Host, open_host

__all__ = ["Host", "open_host"]
