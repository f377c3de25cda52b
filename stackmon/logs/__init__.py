"""Log sources: what the clients got, and why, from nginx's access and error logs and uWSGI's
log, read incrementally and reduced at the source to small immutable summaries.

The API, in the order a host's poller uses it (no Textual, no asyncio; every result is frozen):

    from stackmon.logs.discover import nginx_logs, uwsgi_log
    from stackmon.logs.host import HostLogs, LogSpec

    found = nginx_logs(nginx_master_pid)          # NginxLogs: .access, .errors, .error
    specs = [LogSpec.from_target(t) for t in (*found.access, *found.errors)]
    specs += [LogSpec.from_target(uwsgi_log(master_pid), label=address)   # per instance
              for master_pid, address in instances]
    # overrides from the hosts file / command line: LogSpec("nginx_access", path,
    #     log_format=COMBINED or format_from_args([...])), LogSpec("uwsgi", path, label=...)
    logs = HostLogs(specs, window_s=60)           # once per host; keeps files open
    summary = logs.poll()                         # every interval, in a thread: file reads
    summary.http              # HttpSummary | None: requests, per_s, status {"2xx".."504"},
                              #   upstream_ms p50/p95/p99, top_5xx, top_slow, missing, advice
    summary.upstream_errors   # (UpstreamError(cause, upstream, count, first_at, last_at,
                              #   sample), ...) most frequent first
    summary.events            # (Event(at, source, kind, worker, pid, uri, text), ...) newest
                              #   first; logs.record(Event(..., source="stackmon", ...)) adds
                              #   stackmon's own kills/reloads
    summary.sources           # SourceStatus per log: error (unreadable, not a file...),
                              #   skipped_bytes, cut_lines, notes (rotations)
    summary.errors()          # [(source, message)] for the host's `errors`
    summary.as_json()         # the JSON's `http`, `upstream_errors`, `events` (+ `log_sources`)
    logs.close()

Modules (each documents its rules):
- tail: LogTail, the file follower: starts at the end (reads back only as far as the window
  needs), follows rename/copytruncate/delete rotation, holds partial lines, cuts over-long
  ones, bounds bytes per poll and says what it skipped, refuses FIFOs and devices.
- nginx_format: log_format -> parser (combined, custom, escape=json), the variables a format
  lacks ("add $upstream_response_time to log_format main"), $upstream_response_time sums.
- access: AccessWindow, per-second buckets -> HttpSummary; endpoints folded and redacted.
- nginx_errors: error-log lines -> causes per upstream (queue_full, refused, connect_timeout,
  read_timeout, closed_mid_request, no_live_upstreams, other) -> UpstreamError.
- uwsgi_events: uWSGI log lines -> Event (harakiri, worker_died, respawn, no_mercy, reload,
  chain_reload, queue_full); lines without a time get the read time.
- discover: logs from the running nginx master's config (crossplane's lexer, includes,
  bounded reads) and the uWSGI master's options; non-file destinations say so.
- host: HostLogs and LogSummary.

Cost (bench/bench_logs.py, one core of the shared dev machine): 105,000-155,000 access lines
parsed and counted per second, ~190,000 error-log lines, ~800,000 uWSGI request lines; the
first poll of a 2 GB access log reads 2 MB (its last minute) in ~0.1 s; following a log at
200 requests/s costs ~3 ms per 1 s poll (0.3-0.4 % of a core).
"""
