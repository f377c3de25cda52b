"""Actions that change a running uWSGI: kill one worker, graceful or chain reload.

Every action names what the caller saw (the worker's pid and spawn time) and is refused when
the live process no longer matches, is not a worker of the monitored master, or the caller is
read-only. Every attempt, refused or not, is appended to the audit log.

Public API (used by the CLI, the TUI and the agent):

    await kill_worker(target, worker_id, expect_pid, signal="TERM", *, expect_spawn=None,
                      audit=..., actor=...) -> ActionResult
    await reload_uwsgi(target, mode="graceful"|"chain", *, audit=..., actor=...) -> ActionResult

`target` is an ActionTarget (host name, uWSGI stats address, read_only). Refusals raise
ActionError with a `kind` the agent maps to an HTTP status (see ActionError.HTTP_STATUS).
"""
