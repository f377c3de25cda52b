"""The stackmon agent: one host's sources and actions served over HTTP to remote stackmons.

Modules:
- `security`: the token file (owner-only, read once, never blocking), listen addresses
  (loopback unless a token protects it), TLS contexts for both ends, and what keeps hostile
  clients cheap: the ConnectionGuard (timeouts, per-client and total caps), the descriptor
  limit, the log scrubber that keeps the token out of every log line, rate-limited loop errors.
- `server`: the aiohttp application (GET /v1/snapshot, POST kill/reload, GET /metrics) and
  `serve()`, which runs it until SIGTERM/SIGINT.
- `metrics`: the Prometheus exposition of a HostSnapshot.
- `client`: what a remote stackmon uses: `AgentSource` (polls GET /v1/snapshot for
  stackmon.hosts.AgentHost), `remote_kill()` / `remote_reload()` (actions through an agent).
- `command`: the `stackmon agent` subcommand (configure/run for stackmon.cli.PLUGGED).

The agent API and the snapshot JSON are contracts (docs/contracts.md); the names live in
stackmon.snapshot_json, never here.
"""

from __future__ import annotations

API_VERSION = 1
