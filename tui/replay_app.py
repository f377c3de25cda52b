"""The TUI on recorded data (`stackmon replay`), and the recording hook of the live TUI.

`ReplayApp` is the live StackmonApp, not polling, fed with the polls a `Timeline`
(stackmon.record.replay) names: the same tabs, worker list, detail (request variables as
recorded), events screen and gauges, plus a timeline bar. It is read-only (it is the past):
kills, reloads and the doctor (which reads the live host) are disabled, and its clock is the
replay's "now", so ages read as they did then.

Keys: space (or p) play/pause, `.`/`,` a poll forward/back, `+`/`-` faster/slower, `t` jump to
a time, `n` the next event or action, `x` the next time a host turned critical.

`RecordingApp` is the live TUI with every poll also handed to a recorder (`stackmon --record
FILE`): it wraps the Fleet's callback after StackmonApp has made it, so every poll is recorded,
including the ones the screen coalesces away, and tui/app.py needs no change.
"""

from __future__ import annotations

import signal
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Static

from stackmon.config import HostConfig, Settings, Targets
from stackmon.record.replay import TimeError, Timeline, clock_text, parse_time
from stackmon.record.store import Recording, RecordingError
from stackmon.redact import visible
from tui.actions import ACTIONS
from tui.app import EXIT_SIGNALS, StackmonApp

TICK_S = 0.1


class JumpScreen(ModalScreen[str | None]):
    """Asks for a time to jump to (HH:MM[:SS], +30s, -2m, a date)."""

    DEFAULT_CSS = """
    JumpScreen { align: center middle; }
    JumpScreen > Vertical { width: 60; height: auto; border: round $accent; padding: 0 1;
                           background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Jump to (HH:MM[:SS], +30s, -2m, YYYY-MM-DD HH:MM:SS):")
            yield Input(id="when")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ReplayApp(StackmonApp):
    """StackmonApp on a recording (see the module docstring)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "play", "Play/pause", key_display="space"),
        Binding("full_stop", "step(1)", "Step", key_display="."),
        Binding("comma", "step(-1)", "Back", key_display=","),
        Binding("plus,equals_sign", "faster", "Faster", show=False, key_display="+"),
        Binding("minus", "slower", "Slower", show=False, key_display="-"),
        Binding("t", "jump", "Jump", key_display="t"),
        Binding("n", "next_event", "Next event", key_display="n"),
        Binding("x", "next_critical", "Next critical", key_display="x"),
    ]
    DEFAULT_CSS = """
    #hosts { height: 1fr; }
    #timeline { height: 2; background: $boost; padding: 0 1; }
    """
    # The doctor reads the live host; every action that changes a stack is meaningless on
    # the past: hidden from the Footer and inert, whatever the live app allows.
    _DISABLED = frozenset({"doctor"} | {spec.name for spec in ACTIONS if spec.mutating})

    def __init__(self, recording: Recording, timeline: Timeline,
                 settings: Settings | None = None) -> None:
        base = settings or Settings()
        targets = Targets(hosts=tuple(HostConfig(name=h) for h in timeline.hosts),
                          settings=Settings(interval=base.interval, slow=base.slow,
                                            critical=base.critical, window=base.window,
                                            read_only=True),
                          source=str(recording.path))
        super().__init__(targets, poll=False, clock=lambda: timeline.now)
        self.recording = recording
        self.timeline = timeline
        self._shown: dict[int, int] = {}
        self._broken: set[int] = set()
        self.sub_title = f"replay of {visible(recording.path.name)}"

    def compose(self) -> ComposeResult:
        """The live layout with the timeline bar just above the Footer."""
        for widget in super().compose():
            if isinstance(widget, Footer):
                yield Static(id="timeline", markup=False)
            yield widget

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(TICK_S, self._tick)
        self.apply()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self._DISABLED:
            return False
        return super().check_action(action, parameters)

    # --- feeding the screens --------------------------------------------------------------

    def apply(self) -> None:
        """Show each host's poll at the timeline's now (only the hosts whose poll changed)."""
        frame = self.timeline.frame()
        for index, host in enumerate(self.timeline.hosts):
            ref = frame.get(host)
            if ref is None or self._shown.get(index) == ref.id:
                continue
            self._shown[index] = ref.id
            try:
                snap = self.recording.snapshot(ref.id)
            except RecordingError as exc:
                if ref.id not in self._broken:
                    self._broken.add(ref.id)
                    self.notify(visible(str(exc)), title="Damaged poll", severity="error",
                                markup=False)
                continue
            self.show_snapshot(index, snap)
        self._draw_timeline()

    def _draw_timeline(self) -> None:
        t = self.timeline
        done, total = t.position()
        width = max(10, self.size.width - 60)
        span = max(t.end - t.start, 1e-9)
        filled = round(width * (t.now - t.start) / span)
        state = "▶" if t.playing else "❚❚"
        line = Text.assemble(
            ("REPLAY ", "bold reverse"), f" {state} x{t.speed:g}  ",
            (clock_text(t.now), "bold"), f"  {clock_text(t.start)} ",
            ("━" * filled, "bold cyan"), ("─" * (width - filled), "dim"),
            f" {clock_text(t.end)}  poll {done}/{total}")
        mark = t.last_mark()
        below = Text("space play · . , step · + - speed · t jump · n next event · "
                     "x next critical", style="dim")
        if mark is not None:
            below = Text.assemble((f"{clock_text(mark.at)} ", "bold"),
                                  f"{visible(mark.host)}: {visible(mark.what)}"[:200])
        self.query_one("#timeline", Static).update(Text("\n").join([line, below]))

    def _tick(self) -> None:
        if self.timeline.advance(TICK_S):
            self.apply()

    # --- the replay's keys ----------------------------------------------------------------

    def action_play(self) -> None:
        self.timeline.toggle_play()
        self._draw_timeline()

    def action_toggle_pause(self) -> None:  # `p` in the live TUI: here play/pause
        self.action_play()

    def action_step(self, n: int) -> None:
        self.timeline.step(n)
        self.apply()

    def action_faster(self) -> None:
        self.timeline.faster()
        self._draw_timeline()

    def action_slower(self) -> None:
        self.timeline.slower()
        self._draw_timeline()

    def action_next_event(self) -> None:
        if self.timeline.next_event() is None:
            self.notify("No event after this point.", timeout=3)
        self.apply()

    def action_next_critical(self) -> None:
        ref = self.timeline.next_critical()
        if ref is None:
            self.notify("No host turns critical after this point.", timeout=3)
        else:
            self.notify(f"{visible(ref.host)} turned critical at {clock_text(ref.taken_at)}.",
                        timeout=4, markup=False)
        self.apply()

    def action_jump(self) -> None:
        def chosen(text: str | None) -> None:
            if not text:
                return
            try:
                self.timeline.seek(parse_time(text, self.timeline.now))
            except TimeError as exc:
                self.notify(visible(str(exc)), severity="error", markup=False)
                return
            self.timeline.playing = False
            self.apply()

        self.push_screen(JumpScreen(), chosen)


class RecordingApp(StackmonApp):
    """The live TUI, every poll also submitted to `recorder` (a ThreadedRecorder)."""

    def __init__(self, targets: Targets, recorder: Any) -> None:
        super().__init__(targets)
        self.recorder = recorder

    def on_mount(self) -> None:
        super().on_mount()
        fleet = getattr(self, "fleet", None)
        if fleet is None:
            return
        show = fleet.on_snapshot
        submit = self.recorder.submit

        def record_and_show(index: int, snap: Any) -> None:
            submit(snap)
            if show is not None:
                show(index, snap)

        fleet.on_snapshot = record_and_show
        self.sub_title = "recording"


def _run(app: StackmonApp) -> int:
    """As tui.app.run_app: the app's exit status, the caller's signal handlers put back."""
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}
    try:
        result = app.run()
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return result if isinstance(result, int) else 0


def run_replay(recording: Recording, timeline: Timeline, settings: Settings) -> int:
    return _run(ReplayApp(recording, timeline, settings))


def run_recording(targets: Targets, recorder: Any) -> int:
    try:
        return _run(RecordingApp(targets, recorder))
    finally:
        recorder.close()
