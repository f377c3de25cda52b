"""The command palette finds any host by name.

With hundreds of hosts only a few take a tab (the overview, hosts in alarm, hosts the user
opened): the palette (ctrl+p) is how to reach any other one without scrolling the overview.
Typing part of a name (or of a group) lists the matching hosts with their state; choosing one
opens it in a tab. With an empty query it lists the hosts in alarm first.

The app is duck-typed (`targets`, `host_state(index)`, `open_host(index)`), so that this module
does not import the app and the app can register it in its COMMANDS.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from stackmon.health import SEVERITY_RANK
from stackmon.redact import visible

DISCOVER_LIMIT = 20  # hosts listed before anything is typed


def _help(app: Any, index: int) -> str:
    host = app.targets.hosts[index]
    state = app.host_state(index)
    parts = [f"group {visible(host.group)}"] if host.group else []
    parts.append(visible(state[0]) if state is not None else "connecting…")
    return " · ".join(parts)


class HostCommands(Provider):
    """Hosts by name (and group), for the palette; a hit opens the host's tab."""

    async def search(self, query: str) -> Hits:
        app: Any = self.app
        matcher = self.matcher(query)
        for index, host in enumerate(app.targets.hosts):
            name = visible(host.name)
            candidate = f"Host {name}"
            score = matcher.match(candidate)
            if score <= 0 and host.group:
                score = matcher.match(f"{candidate} {visible(host.group)}") * 0.9
                candidate = f"{candidate} {visible(host.group)}" if score > 0 else candidate
            if score > 0:
                yield Hit(score, matcher.highlight(candidate), partial(app.open_host, index),
                          text=candidate, help=_help(app, index))

    async def discover(self) -> Hits:
        app: Any = self.app
        hosts = list(enumerate(app.targets.hosts))

        def badness(item: tuple[int, Any]) -> tuple[int, int]:
            state = app.host_state(item[0])
            return (-SEVERITY_RANK[state[1]] if state is not None else 0, item[0])

        for index, host in sorted(hosts, key=badness)[:DISCOVER_LIMIT]:
            text = f"Host {visible(host.name)}"
            yield DiscoveryHit(Content(text), partial(app.open_host, index), text=text,
                               help=_help(app, index))
