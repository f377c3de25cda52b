"""A uWSGI worker's Python stack, now: what a stuck worker is doing before anyone kills it.

Killing a stuck worker ends the outage and destroys the evidence; this module keeps it. It
runs py-spy (PyPI `py-spy`, a binary wheel installed with stackmon) on one worker and returns
a frozen `StackResult`: every thread, each frame's function, file and line (and locals with
`with_locals`), the thread that serves the worker's oldest request in flight first and marked.
The CLI (`stackmon stack`), the agent (GET /v1/workers/{i}/{id}/stack) and the TUI all use it
through the host interface (`Host.trace`).

Decisions:
- The same pid checks as a kill (stackmon.actions.kill.verify_worker): the pid the caller saw,
  a child of the kernel-confirmed master, started when the stats say. py-spy reads the target's
  memory as root, so it must never be pointed at a process that merely claims to be a worker.
  A pidfd is held across the dump: if the process exited meanwhile, its pid may have been
  reused, and the dump is thrown away rather than attributed to the worker.
- Non-blocking by default (`py-spy dump --nonblocking`): the worker is never paused, at the
  cost of a frame that may be a moment out of date, which is irrelevant for a worker stuck for
  seconds. `nonblocking=False` (py-spy pauses the process for the read) exists for the bench
  and for callers that want an exact picture.
- Locals are shown only when asked, and redacted like request variables: a local whose name
  looks secret (token, password, session, cookie, key...) is hidden whole, secrets inside a
  value (query parameters, bearer values, JWTs, "Cookie": "..." entries of a dict repr) are
  hidden, and every text (names, files, thread names, values) has control characters made
  visible, since it comes from the traced process.
- Bounded: py-spy's output is capped (MAX_OUTPUT), it gets a deadline (DUMP_TIMEOUT) and is
  killed after it, at most MAX_CONCURRENT dumps run at once per process, and the parsed result
  is capped in threads, frames, locals and text length (`truncated` says so).
- Figures (bench/bench_stack.py): a dump takes 15-25 ms for one thread, 70-100 ms for 64
  threads 20 frames deep (150 ms with locals); non-blocking stops the worker for nothing
  measurable, a blocking dump ~1 ms (1 thread) to ~30 ms (64 threads).
- When the kernel refuses the trace, the message says what to change (run as root, add
  CAP_SYS_PTRACE to the container, lower kernel.yama.ptrace_scope), from what this process can
  see of its own rights and the target's owner (`ptrace_problem`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import stat
import sys
import sysconfig
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackmon.actions.base import ActionError, ActionTarget
from stackmon.actions.kill import fetch_instance, verify_worker
from stackmon.bounded_io import BoundedReadError, read_file
from stackmon.model import Worker
from stackmon.redact import REDACTED, clean, is_secret_key, visible
from stackmon.trust import process_ids

if TYPE_CHECKING:
    from stackmon.hosts.base import Host

SOURCE = "py-spy"
DUMP_TIMEOUT = 10.0  # seconds py-spy gets; a dump takes ~15 ms, 64 threads with locals ~150 ms
MAX_OUTPUT = 16 * 1024 * 1024  # bytes of py-spy JSON read (64 threads x 100 frames x locals)
MAX_STDERR = 64 * 1024
MAX_CONCURRENT = 2  # dumps at once per process (an agent asked for 100 stacks at once)
MAX_THREADS = 1024
MAX_FRAMES = 256  # per thread, innermost first: the end that matters
MAX_LOCALS = 64  # per frame
MAX_TEXT = 300  # characters of a name, file or thread name
MAX_VALUE = 500  # characters of a local's value
AUDIT_THREADS = 8  # threads, and frames per thread, that a kill's audit record carries
AUDIT_FRAMES = 24
CAP_SYS_PTRACE = 19

_CORE_THREAD = re.compile(r"^uWSGIWorker(\d+)Core(\d+)$")
# "KEY": "value" / 'KEY': 'value' inside a dict repr (py-spy shows environ and header dicts);
# a value cut by py-spy or by MAX_VALUE (no closing quote) runs to the end and is hidden too.
_REPR_PAIR = re.compile(
    r"""(?P<key>"[^"\\\n]{1,128}"|'[^'\\\n]{1,128}')(?P<sep>\s*:\s*)b?"""
    r"""(?P<val>"(?:[^"\\]|\\.)*(?:"|$)|'(?:[^'\\]|\\.)*(?:'|$))""")


# ------------------------------------------------------------------ the result


@dataclass(frozen=True, slots=True)
class Local:
    """One local variable as it may be shown: the value is py-spy's repr, redacted."""

    name: str
    value: str
    arg: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int | None
    locals: tuple[Local, ...] | None = None  # None: locals were not asked for


@dataclass(frozen=True, slots=True)
class InFlight:
    """The request a core thread is serving, from the stats taken just before the dump."""

    method: str
    uri: str
    running_s: float | None


@dataclass(frozen=True, slots=True)
class ThreadStack:
    """One thread: frames innermost first (py-spy's order), `core` when uWSGI named it."""

    name: str
    thread_id: int
    os_thread_id: int | None
    active: bool
    owns_gil: bool
    frames: tuple[Frame, ...]
    core: int | None = None
    marked: bool = False
    request: InFlight | None = None

    @property
    def state(self) -> str:
        """The thread's state in words, true to both sources. py-spy's `active` says only
        whether the OS thread was on a CPU when sampled; a core thread blocked in a sleep, a
        lock or a socket read while the stats say it serves a request is not "idle" (seen:
        "(idle)  serving GET /hang/export.csv for 15 s"): it waits, and the request waits
        with it."""
        if self.active:
            return "active"
        return "waiting: not on CPU" if self.request is not None else "idle"


@dataclass(frozen=True, slots=True)
class StackResult:
    """Every thread of one worker at `taken_at`, the marked one (if any) first."""

    host: str
    instance: int
    address: str
    worker_id: int
    pid: int
    taken_at: float
    took_s: float
    nonblocking: bool
    with_locals: bool
    threads: tuple[ThreadStack, ...]
    truncated: bool = False
    source: str = SOURCE
    # Why the first thread is marked (or why none is), in a sentence for the reader.
    marked_reason: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def marked(self) -> ThreadStack | None:
        return next((t for t in self.threads if t.marked), None)

    def innermost(self) -> Frame | None:
        """The innermost frame of the marked thread: where the stuck request is."""
        marked = self.marked
        return marked.frames[0] if marked is not None and marked.frames else None

    def summary(self) -> dict[str, Any]:
        """What a kill's audit record carries: where each thread was, never any locals."""
        return {
            "taken_at": round(self.taken_at, 3), "pid": self.pid, "source": self.source,
            "nonblocking": self.nonblocking, "truncated": self.truncated
            or len(self.threads) > AUDIT_THREADS,
            "threads": [
                {"name": t.name, "marked": t.marked, "core": t.core,
                 "frames": [f"{f.function} ({f.file}:{f.line if f.line is not None else '?'})"
                            for f in t.frames[:AUDIT_FRAMES]]}
                for t in self.threads[:AUDIT_THREADS]
            ],
        }


# ------------------------------------------------------------------ JSON both ways


def stack_to_dict(result: StackResult) -> dict[str, Any]:
    """The `stackmon stack --json` document, also the agent's answer."""
    return {
        "host": result.host, "instance": result.instance, "address": result.address,
        "worker_id": result.worker_id, "pid": result.pid, "taken_at": result.taken_at,
        "took_s": result.took_s, "nonblocking": result.nonblocking,
        "locals": result.with_locals, "source": result.source, "truncated": result.truncated,
        "marked_reason": result.marked_reason, "notes": list(result.notes),
        "threads": [_thread_to_dict(t) for t in result.threads],
    }


def _thread_to_dict(t: ThreadStack) -> dict[str, Any]:
    return {
        "name": t.name, "thread_id": t.thread_id, "os_thread_id": t.os_thread_id,
        "core": t.core, "marked": t.marked, "active": t.active, "owns_gil": t.owns_gil,
        "request": None if t.request is None else {
            "method": t.request.method, "uri": t.request.uri, "running_s": t.request.running_s},
        "frames": [{"function": f.function, "file": f.file, "line": f.line,
                    "locals": None if f.locals is None else
                    [{"name": v.name, "value": v.value, "arg": v.arg} for v in f.locals]}
                   for f in t.frames],
    }


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """Text from outside (a traced process, an agent): a string, cut, redacted, visible."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    return clean(text)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) < 1e15 else None


def stack_from_dict(doc: Any) -> StackResult:
    """A StackResult from an agent's answer, checked and bounded like py-spy's own output:
    the far side's text is cleaned again and its locals redacted again (an older agent, or
    whatever answers at its address, is not trusted to have done it). ValueError when the
    document is not a stack answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("threads"), list):
        raise ValueError("not a stack answer (no threads)")
    threads = []
    for raw in doc["threads"][:MAX_THREADS]:
        if not isinstance(raw, dict):
            raise ValueError("a thread is not an object")
        req = raw.get("request")
        threads.append(ThreadStack(
            name=_text(raw.get("name")), thread_id=_int(raw.get("thread_id")) or 0,
            os_thread_id=_int(raw.get("os_thread_id")), active=raw.get("active") is True,
            owns_gil=raw.get("owns_gil") is True, core=_int(raw.get("core")),
            marked=raw.get("marked") is True,
            request=InFlight(_text(req.get("method")), _text(req.get("uri"), MAX_VALUE),
                             _num(req.get("running_s"))) if isinstance(req, dict) else None,
            frames=_frames([{"name": f.get("function"), "filename": f.get("file"),
                             "line": f.get("line"), "locals": _remote_locals(f.get("locals"))}
                            for f in raw.get("frames") or [] if isinstance(f, dict)]),
        ))
    return StackResult(
        host=_text(doc.get("host")), instance=_int(doc.get("instance")) or 0,
        address=_text(doc.get("address")), worker_id=_int(doc.get("worker_id")) or 0,
        pid=_int(doc.get("pid")) or 0, taken_at=_num(doc.get("taken_at")) or 0.0,
        took_s=_num(doc.get("took_s")) or 0.0, nonblocking=doc.get("nonblocking") is not False,
        with_locals=doc.get("locals") is True, threads=tuple(threads),
        truncated=doc.get("truncated") is True or len(doc["threads"]) > MAX_THREADS,
        source=_text(doc.get("source") or SOURCE), marked_reason=_text(doc.get("marked_reason"),
                                                                       MAX_VALUE),
        notes=tuple(_text(n, MAX_VALUE) for n in (doc.get("notes") or [])[:16]),
    )


def _remote_locals(raw: Any) -> list[dict[str, Any]] | None:
    if not isinstance(raw, list):
        return None
    return [{"name": v.get("name"), "repr": v.get("value"), "arg": v.get("arg")}
            for v in raw if isinstance(v, dict)]


# ------------------------------------------------------------------ py-spy's output


def redact_local(name: str, value: str) -> str:
    """A local's value as it may be shown: hidden whole when its name looks secret (like a
    request variable), else with secrets inside it hidden (dict entries with secret keys,
    query parameters, bearer values, JWTs) and control characters made visible."""
    if is_secret_key(name):
        return REDACTED
    if len(value) > MAX_VALUE:
        value = value[:MAX_VALUE] + "…"
    value = _REPR_PAIR.sub(_redact_pair, value)
    return clean(value)


def _redact_pair(m: re.Match[str]) -> str:
    if not is_secret_key(m.group("key")[1:-1]):
        return m.group()
    quote = m.group("val")[0]
    return f"{m.group('key')}{m.group('sep')}{quote}{REDACTED}{quote}"


def _frames(raw: list[Any]) -> tuple[Frame, ...]:
    frames = []
    for f in raw[:MAX_FRAMES]:
        if not isinstance(f, dict):
            continue
        loc = f.get("locals")
        local_vars = None
        if isinstance(loc, list):
            local_vars = tuple(
                Local(name=_text(v.get("name")),
                      value=redact_local(str(v.get("name") or ""), str(v.get("repr") or "")),
                      arg=v.get("arg") is True)
                for v in loc[:MAX_LOCALS] if isinstance(v, dict))
        frames.append(Frame(function=_text(f.get("name")), file=_text(f.get("filename")),
                            line=_int(f.get("line")), locals=local_vars))
    return tuple(frames)


def parse_dump(data: bytes) -> tuple[list[ThreadStack], bool]:
    """py-spy's `dump --json` output as threads (unmarked), and whether anything was cut."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ActionError("failed", "py-spy's output is not valid JSON; nothing to show") \
            from None
    if not isinstance(doc, list):
        raise ActionError("failed", "py-spy's output is not a list of threads")
    truncated = len(doc) > MAX_THREADS
    threads = []
    for raw in doc[:MAX_THREADS]:
        if not isinstance(raw, dict):
            continue
        got = raw.get("frames")
        frames_raw: list[Any] = got if isinstance(got, list) else []
        truncated = truncated or len(frames_raw) > MAX_FRAMES
        name = _text(raw.get("thread_name") or "")
        m = _CORE_THREAD.match(name)
        threads.append(ThreadStack(
            name=name, thread_id=_int(raw.get("thread_id")) or 0,
            os_thread_id=_int(raw.get("os_thread_id")), active=raw.get("active") is True,
            owns_gil=raw.get("owns_gil") is True, frames=_frames(frames_raw),
            core=int(m.group(2)) if m else None))
    return threads, truncated


def mark(threads: list[ThreadStack], worker: Worker) -> tuple[tuple[ThreadStack, ...], str]:
    """The threads in reading order with the one serving the worker's oldest request in flight
    first and marked; then the other uWSGI cores by core id, then the application's threads.

    uWSGI names each core's thread `uWSGIWorker<N>Core<C>`; the stats say which core runs which
    request. A worker with one thread and one request needs no name to tell."""
    requests = {r.core: r for r in worker.requests_in_flight}
    prefix = f"uWSGIWorker{worker.id}Core"
    shown: list[ThreadStack] = []
    for t in threads:
        r = requests.get(t.core) if t.core is not None and t.name.startswith(prefix) else None
        shown.append(t if r is None else _with_request(t, r.method, r.uri, r.running_s))
    oldest = max(worker.requests_in_flight, key=lambda r: r.running_s or 0.0, default=None)
    if oldest is None:
        return tuple(sorted(shown, key=_order)), "no request in flight: no thread is marked"
    at = next((i for i, t in enumerate(shown) if t.core == oldest.core and t.request), None)
    if at is None and len(shown) == 1:
        at = 0
    age = f"{oldest.running_s:.0f} s" if oldest.running_s is not None else "?"
    if at is None:
        return tuple(sorted(shown, key=_order)), (
            f"core {oldest.core} serves the oldest request, but no thread is named "
            f"{prefix}{oldest.core}: no thread is marked")
    target = _marked(shown.pop(at))
    if target.request is None:
        target = _with_request(target, oldest.method, oldest.uri, oldest.running_s)
    return (target, *sorted(shown, key=_order)), (
        f"marked (>>): core {oldest.core} serves the oldest request in flight "
        f"({oldest.method} {oldest.uri}, {age})")


def _task_state(pid: int, tid: int) -> str | None:
    """The kernel's one-letter state of thread `tid` of `pid` (R running, S sleeping...)."""
    text = _proc_text(f"/proc/{pid}/task/{tid}/stat")
    if not text or ")" not in text:
        return None
    rest = text[text.rindex(")") + 1:].split()  # the name, in (), may hold spaces and ")"
    return rest[0] if rest else None


def forked_main_thread(threads: list[ThreadStack], pid: int,
                       tasks: set[int] | None = None) -> list[ThreadStack]:
    """The threads with a forked worker's main thread given its own OS thread and activity.

    Why: py-spy names a worker's main thread (uWSGI's core 0) with the OS thread id it had in
    the master before fork() (seen: the master's pid), finds no such thread in the worker, and
    reports it `active` whatever it does: a core 0 sleeping in the request it serves read
    "(active)". When exactly one thread has an id that is not a thread of the worker and
    exactly one of the worker's threads is claimed by none, they are the same thread: its
    state is read from /proc (`R`: on a CPU). Otherwise nothing is changed."""
    if tasks is None:
        try:
            tasks = {int(n) for n in os.listdir(f"/proc/{pid}/task") if n.isdigit()}
        except OSError:
            return threads
    strays = [t for t in threads if t.os_thread_id not in tasks]
    free = tasks - {t.os_thread_id for t in threads}
    if len(strays) != 1 or len(free) != 1:
        return threads
    tid = free.pop()
    state = _task_state(pid, tid)
    if state is None:
        return threads
    fixed = replace(strays[0], os_thread_id=tid, active=state == "R")
    return [fixed if t is strays[0] else t for t in threads]


def _order(t: ThreadStack) -> tuple[bool, int, str]:
    return t.core is None, t.core if t.core is not None else 0, t.name


def _with_request(t: ThreadStack, method: str, uri: str, running_s: float | None) -> ThreadStack:
    return ThreadStack(t.name, t.thread_id, t.os_thread_id, t.active, t.owns_gil, t.frames,
                       t.core, t.marked, InFlight(method, uri, running_s))


def _marked(t: ThreadStack) -> ThreadStack:
    return ThreadStack(t.name, t.thread_id, t.os_thread_id, t.active, t.owns_gil, t.frames,
                       t.core, True, t.request)


# ------------------------------------------------------------------ rights


def _proc_text(path: str) -> str | None:
    try:
        return read_file(path, limit=64 * 1024, what="proc file").decode("ascii", "replace")
    except (BoundedReadError, OSError):
        return None


def _has_ptrace_cap() -> bool:
    status = _proc_text("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            with contextlib.suppress(ValueError):
                return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    return os.geteuid() == 0


def _ptrace_scope() -> int | None:
    text = _proc_text("/proc/sys/kernel/yama/ptrace_scope")
    return int(text.strip()) if text and text.strip().isdigit() else None


def in_container() -> str | None:
    """What says this process runs in a container, or None."""
    for path, what in (("/.dockerenv", "Docker"), ("/run/.containerenv", "Podman")):
        if os.path.exists(path):
            return what
    cgroup = _proc_text("/proc/1/cgroup") or ""
    for word, what in (("kubepods", "Kubernetes"), ("docker", "Docker"), ("lxc", "LXC"),
                       ("containerd", "containerd")):
        if word in cgroup:
            return what
    return None


_CONTAINER_FIX = ("add the capability to the container (docker run --cap-add=SYS_PTRACE; "
                  "Kubernetes: securityContext.capabilities.add: [\"SYS_PTRACE\"]), or run "
                  "stackmon (or its agent) on the host itself")


def ptrace_problem(pid: int) -> str | None:
    """Why this process may not trace `pid`, with what to change; None when nothing here says
    it would be refused (the kernel still has the last word: see `refused_message`)."""
    scope = _ptrace_scope()
    cap = _has_ptrace_cap()
    me = os.geteuid()
    if scope == 3:
        return ("kernel.yama.ptrace_scope is 3: no process may be traced on this host until it "
                "reboots; set kernel.yama.ptrace_scope to 1 or lower at boot (/etc/sysctl.d/) "
                "to allow it")
    if cap:
        return None
    ids = process_ids(pid)
    owner = ids[0] if ids is not None else None
    container = in_container()
    if me == 0:
        where = f" (this looks like a {container} container)" if container else ""
        return (f"stackmon runs as root but without CAP_SYS_PTRACE{where}, which tracing pid "
                f"{pid} needs: {_CONTAINER_FIX}")
    if scope == 2:
        return (f"kernel.yama.ptrace_scope is 2: only a process with CAP_SYS_PTRACE may trace; "
                f"run stackmon as root (sudo stackmon stack ...), or set "
                f"`sysctl kernel.yama.ptrace_scope=1` and run it as uid {owner}")
    if owner is not None and owner != os.getuid():
        return (f"stackmon runs as uid {os.getuid()} without CAP_SYS_PTRACE; worker pid {pid} "
                f"runs as uid {owner}: tracing another user's process needs root: run it as "
                "root (sudo stackmon stack ...) or as the uWSGI user")
    if scope == 1:
        return ("kernel.yama.ptrace_scope is 1: a process may only be traced by its ancestors; "
                "run stackmon as root (sudo stackmon stack ...), give it CAP_SYS_PTRACE, or set "
                "`sysctl kernel.yama.ptrace_scope=0`")
    return None


def refused_message(pid: int) -> str:
    """The message for a trace the kernel refused although `ptrace_problem` saw no reason."""
    known = ptrace_problem(pid)
    if known:
        return f"not allowed to trace pid {pid}: {known}"
    container = in_container()
    hint = (f"this looks like a {container} container: {_CONTAINER_FIX}" if container else
            "a security module (AppArmor, SELinux) or a seccomp filter may forbid ptrace and "
            "process_vm_readv for stackmon; allow them, or run stackmon as root on the host")
    return f"not allowed to trace pid {pid} although stackmon has the rights to: {hint}"


# ------------------------------------------------------------------ running py-spy


def find_py_spy() -> str | None:
    """py-spy installed with stackmon (the scripts dir of this Python), else on PATH."""
    for d in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = d / "py-spy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("py-spy")


def _check_binary(path: str) -> None:
    """A binary that anyone but root or us could have replaced must not run as root with the
    rights to read every process's memory."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ActionError("unsupported", f"cannot use py-spy at {path}: {exc.strerror}") \
            from None
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ActionError("permission", f"refusing to run {path}: it is owned by uid "
                                        f"{st.st_uid} or writable by others")


_LIMITS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
    weakref.WeakKeyDictionary()


def _limit() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _LIMITS.get(loop)
    if sem is None:
        sem = _LIMITS[loop] = asyncio.Semaphore(MAX_CONCURRENT)
    return sem


async def _read_capped(stream: asyncio.StreamReader | None, limit: int) -> tuple[bytes, bool]:
    data = bytearray()
    if stream is None:
        return b"", False
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > limit:
            return bytes(data[:limit]), True
    return bytes(data), False


async def run_py_spy(pid: int, *, nonblocking: bool = True, with_locals: bool = False,
                     timeout: float = DUMP_TIMEOUT) -> bytes:
    """py-spy's JSON dump of `pid` (no checks of what `pid` is: see `trace_worker`), or an
    ActionError whose message says what went wrong and what to do about it."""
    binary = find_py_spy()
    if binary is None:
        raise ActionError("unsupported", "py-spy is not installed (it comes with stackmon: "
                                         "reinstall stackmon, or `pip install 'py-spy>=0.4,<0.5'` "
                                         "into its environment)")
    _check_binary(binary)
    argv = [binary, "dump", "--pid", str(pid), "--json"]
    argv += ["--nonblocking"] if nonblocking else []
    argv += ["--locals"] if with_locals else []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_BACKTRACE": "0",
           "RUST_LIB_BACKTRACE": "0"}
    try:
        async with asyncio.timeout(timeout + 5.0):  # the wait for a slot counts too
            async with _limit():
                return await _spawn(argv, pid, env, timeout)
    except TimeoutError:
        raise ActionError("failed", f"no stack dump of pid {pid} within {timeout:g} s "
                                    "(other dumps in progress?); nothing to show") from None


async def _spawn(argv: list[str], pid: int, env: dict[str, str], timeout: float) -> bytes:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:  # not executable, no memory for a process, too many open files
        raise ActionError("failed", f"cannot run py-spy ({argv[0]}): "
                                    f"{exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout):
            (out, too_big), (err, _) = await asyncio.gather(
                _read_capped(proc.stdout, MAX_OUTPUT), _read_capped(proc.stderr, MAX_STDERR))
            if too_big:
                raise ActionError("failed", f"py-spy's dump of pid {pid} is over "
                                            f"{MAX_OUTPUT // (1024 * 1024)} MiB; refused")
            code = await proc.wait()
    except TimeoutError:
        raise ActionError("failed", f"py-spy did not finish dumping pid {pid} within "
                                    f"{timeout:g} s; stopped it") from None
    finally:
        if proc.returncode is None:  # ours, by its own pid: the one process we started
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if code != 0:
        raise _py_spy_error(pid, err.decode("utf-8", "replace"))
    return out


def _py_spy_error(pid: int, stderr: str) -> ActionError:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    first = next((ln for ln in lines if ln.startswith("Error")), lines[0] if lines else "")
    low = stderr.lower()
    if "permission denied" in low or "operation not permitted" in low:
        return ActionError("permission", refused_message(pid))
    if "no such file" in low or "no such process" in low or "check that the process is" in low:
        return ActionError("gone", f"pid {pid} exited before its stack could be read")
    if "python version" in low or "python interpreter" in low:
        return ActionError("unsupported", f"pid {pid} runs no Python interpreter py-spy can "
                                          f"read ({_text(first)})")
    return ActionError("failed", f"py-spy could not dump pid {pid}: {_text(first) or 'no reason'}")


# ------------------------------------------------------------------ the checked trace


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise ActionError("gone", f"pid {pid} has already exited") from None
    except OSError:
        return None  # no pidfds (old kernel, seccomp): the identity check after still holds


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    ready, _, _ = select.select([pidfd], [], [], 0)
    return bool(ready)


async def trace_worker(target: ActionTarget, worker_id: int, expect_pid: int, *,
                       with_locals: bool = False, expect_spawn: float | None = None,
                       nonblocking: bool = True, timeout: float = DUMP_TIMEOUT) -> StackResult:
    """The stack of worker `worker_id` of `target` if it still is `expect_pid` (the same
    checks as a kill: see the module docstring); ActionError with a kind and a sentence else.
    Nothing is audited: reading a stack changes nothing (a kill that captures one records it,
    see `capture_for_kill`)."""
    inst = await fetch_instance(target)
    problem = ptrace_problem(expect_pid)
    if problem is not None:  # said first: the checks below would fail on it less clearly
        raise ActionError("permission", f"not allowed to trace pid {expect_pid}: {problem}")
    worker, _proc, ident = verify_worker(inst, target, worker_id, expect_pid, expect_spawn)
    pidfd = _pidfd(expect_pid)
    started = time.monotonic()
    try:
        taken_at = time.time()
        data = await run_py_spy(expect_pid, nonblocking=nonblocking, with_locals=with_locals,
                                timeout=timeout)
        took = time.monotonic() - started
        if pidfd is not None and _exited(pidfd):
            raise ActionError("gone", f"pid {expect_pid} exited during the dump; its stack is "
                                      "not shown (the pid may be another process's now)")
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if pidfd is None:
        from stackmon.trust import identity

        if identity(expect_pid) != ident:
            raise ActionError("stale", f"pid {expect_pid} was replaced during the dump")
    threads, truncated = parse_dump(data)
    threads = forked_main_thread(threads, expect_pid)
    ordered, reason = mark(threads, worker)
    return StackResult(
        host=target.host, instance=target.index, address=clean(str(target.address)),
        worker_id=worker_id, pid=expect_pid, taken_at=taken_at, took_s=round(took, 4),
        nonblocking=nonblocking, with_locals=with_locals, threads=ordered,
        truncated=truncated, marked_reason=reason,
        notes=() if nonblocking else ("the worker was paused for the dump",))


# ------------------------------------------------------------------ for the kill flow


async def capture_for_kill(host: Host, index: int, worker_id: int, expect_pid: int, *,
                           expect_spawn: float | None = None,
                           ) -> tuple[StackResult | None, str]:
    """The kill flow's "capture the stack first": trace the worker so that the kill's own
    audit record (Host.kill(stack=result.summary())) says where it was stuck, even though
    the kill destroys it.

    Never raises ActionError: a stack that cannot be read must not stop the kill that ends the
    outage; the reason is returned instead. Returns (stack or None, message)."""
    try:
        result = await host.trace(index, worker_id, expect_pid, with_locals=False,
                                  expect_spawn=expect_spawn)
    except ActionError as exc:
        return None, f"stack not captured: {exc.message}"
    inner = result.innermost()
    where = f" (marked thread in {inner.function}, {inner.file}:{inner.line})" if inner else ""
    return result, f"stack of pid {expect_pid} captured{where}"


# ------------------------------------------------------------------ text


def render_stack(result: StackResult) -> str:
    """The text of `stackmon stack`: a header, then each thread, innermost frame first (as
    py-spy prints them), the marked thread first with `>>`."""
    mode = "non-blocking" if result.nonblocking else "blocking (worker paused)"
    lines = [f"{result.host}  uWSGI {result.address}  worker {result.worker_id}  "
             f"pid {result.pid}  {len(result.threads)} threads  ({result.source}, {mode}, "
             f"{result.took_s * 1000:.0f} ms)", result.marked_reason]
    lines += [f"note: {n}" for n in result.notes]
    for t in result.threads:
        # The name, not the OS thread id: in a forked worker, py-spy reports the main thread
        # with the id it had in the master (seen), which would look like another process.
        head = f"{'>>' if t.marked else '  '} {t.name or 'thread'} ({t.state})"
        if t.request is not None:
            age = f"{t.request.running_s:.1f} s" if t.request.running_s is not None else "?"
            head += f"  serving {t.request.method} {t.request.uri} for {age}"
        lines += ["", head]
        if not t.frames:
            lines.append("     (no Python frames: waiting in uWSGI for a request)"
                         if t.core is not None else "     (no Python frames)")
        for f in t.frames:
            lines.append(f"     {f.function} ({f.file}:{f.line if f.line is not None else '?'})")
            for v in f.locals or ():
                lines.append(f"         {v.name} = {v.value}")
    if result.truncated:
        lines += ["", "(cut: more threads, frames or locals than shown)"]
    return "\n".join(visible(line) for line in lines)
