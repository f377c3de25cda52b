"""The shape of the code, checked: no import cycles, one place that tells local hosts from
agent hosts, widgets that do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stackmon", "tui", "widgets")


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _imports(path: Path, name: str, mods: dict[str, Path], *, top_level: bool) -> set[str]:
    """Project modules imported by `path` (only at module level when top_level), resolved to
    the most specific module that exists."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level:  # `if TYPE_CHECKING:` imports do not run
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles_at_module_level() -> None:
    mods = _modules()
    graph = {name: _imports(path, name, mods, top_level=True) for name, path in mods.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of design.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_only_the_host_interface_tells_local_from_agent_hosts() -> None:
    """`if host.agent` branches were asked to go: a capability is added to stackmon.hosts
    once. The agent package itself, the config parser and the interface may name the field."""
    allowed = ("stackmon/hosts/", "stackmon/agent/", "stackmon/config.py")
    offenders = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "agent":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_widgets_do_no_io() -> None:
    banned = {"open", "socket", "subprocess", "httpx", "psutil"}
    offenders = []
    for path in (ROOT / "widgets").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""]
                offenders += [f"{path.name}: import {n}" for n in names
                              if n.split(".")[0] in {"socket", "subprocess", "httpx", "psutil"}]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in banned:
                offenders.append(f"{path.name}:{node.lineno}: {node.func.id}()")
    assert offenders == []
