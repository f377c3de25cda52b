"""The one registry of user actions.

Every action is declared here once, with its id, default key and description. The App's
BINDINGS, the Footer, the help screen and the command palette are all generated from this list,
so a key can never be documented in one place and bound differently in another. Actions that
change a running system are marked `mutating`: in read-only mode they leave the Footer, the help
and the palette, and their key only says why nothing happens (a silent key reads as a broken
one).

The Footer cannot show every key at 80 columns: `narrow` marks the ones it keeps there (what a
3 a.m. triage needs: the detail, the worst worker, kill, reload, pause, help, quit), the rest
stay bound and listed by `?`.

The fleet overview shows no host, so a key of one host's view (K, w, s...) has no worker or
screen to act on there: its `overview_hint` says what to do instead, naming the selected host
("On the overview: Enter opens web-1, then K."). `bindings()` binds that key a second time to
`overview_hint`, hidden, which the app lets run only on the overview, where the host action
itself is inert: the Footer lists neither, the key still answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True, slots=True)
class ActionSpec:
    id: str  # the Textual action string: App.action_<name>, optionally with arguments
    keys: str  # comma-separated Textual key names
    description: str  # short, for the Footer
    help: str  # one sentence, for the help screen and the palette
    footer: bool = True
    mutating: bool = False
    key_display: str | None = None
    narrow: bool = False  # kept in the Footer on a narrow terminal
    # Switches between tabs: with one tab it is listed nowhere (its key still says why).
    tabs: bool = False
    # A key of one host's view: what it says on the overview instead ({host}: the selected
    # host). The app keeps such actions inert there (tui.app.StackmonApp.check_action).
    overview_hint: str | None = None
    # Listed in the help and the palette; False: a key another's row already explains (l in
    # t's, Esc in o's), which would only push the rest of the help off an 80x24 screen.
    listed: bool = True

    @property
    def name(self) -> str:
        """The action's name without arguments (for check_action and keymaps)."""
        return self.id.split("(", 1)[0]

    @property
    def hint_action(self) -> str:
        """The action its hint binding runs: App.action_overview_hint(keys)."""
        return f"overview_hint({self.keys!r})"


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("open_worker", "enter", "Detail", "Open the selected worker: every request "
               "variable of its requests in flight (secrets redacted).", footer=False,
               overview_hint="On the overview: Enter opens {host}, then Enter on a worker."),
    ActionSpec("worst", "w", "Worst", "Go to the worst worker (the oldest request past a "
               "threshold); again: the next worst. On the worst, the cursor follows it.",
               narrow=True, overview_hint="On the overview the worst hosts come first: Enter "
               "opens {host}, then w for its worst worker."),
    ActionSpec("trace_worker", "t", "Stack", "The worker's Python stack, now (py-spy), in "
               "its detail; l adds locals.",
               overview_hint="On the overview: Enter opens {host}, then t on a worker."),
    ActionSpec("trace_worker(True)", "l", "Locals", "The worker's Python stack with its "
               "locals (secrets redacted), in its detail; there l turns them off and on.",
               footer=False, listed=False, overview_hint="On the overview: Enter opens "
               "{host}, then l on a worker (its stack with locals)."),
    ActionSpec("kill_worker", "K", "Kill", "Kill the selected worker (asks first: SIGTERM, "
               "SIGKILL, or SIGUSR2 then SIGTERM); its master respawns it.", mutating=True,
               key_display="K", narrow=True,
               overview_hint="On the overview: Enter opens {host}, then K on a worker."),
    ActionSpec("reload('graceful')", "R", "Reload", "Graceful reload of this uWSGI instance, "
               "then watch it drain worker by worker against its mercy.", mutating=True,
               key_display="R", narrow=True),
    ActionSpec("cycle_sort", "s", "Sort", "Sort workers by id, by the age of their oldest "
               "request, or by requests served.", overview_hint="The overview is "
               "always worst first, by group; s sorts a host's workers: Enter opens {host}, "
               "then s."),
    ActionSpec("filter", "slash", "Filter", "Show only workers whose status, pid, method, URI "
               "or client matches a text.", key_display="/"),
    ActionSpec("toggle_pause", "p", "Pause", "Freeze the screen (polling continues; the "
               "latest data is shown on resume). PAUSED shows in the header meanwhile.",
               narrow=True),
    ActionSpec("next_host", "right_square_bracket", "Next host", "Switch to the next host "
               "tab.", key_display="]", tabs=True),
    ActionSpec("prev_host", "left_square_bracket", "Prev host", "Switch to the previous host "
               "tab.", footer=False, key_display="[", tabs=True),
    ActionSpec("next_instance", "i", "Instance", "Show the next uWSGI instance of this host.",
               footer=False, overview_hint="On the overview: Enter opens {host}, then i for "
               "its next uWSGI instance."),
    ActionSpec("events", "e", "Events", "What happened on this host, newest first: "
               "harakiri, workers that died or respawned, reloads, NO MERCY, stackmon's own "
               "kills, each with its time, worker, pid and request; / filters."),
    ActionSpec("doctor", "d", "Doctor", "Diagnose this host's tuning: listen vs somaxconn, "
               "timeouts vs the load balancer's, reload mercy vs the health check, fds."),
    ActionSpec("reload('chain')", "C", "Chain reload", "Chain reload: one worker at a time.",
               mutating=True, footer=False, key_display="C",
               overview_hint="On the overview R reloads a group; C is one host's: Enter opens "
               "{host}, then C."),
    ActionSpec("rolling_reload", "R", "Roll group", "On the overview: rolling reload of the "
               "selected host's group; the confirmation sets how many hosts may drain at "
               "once (+/-, never the whole group).", mutating=True,
               key_display="R", narrow=True),
    ActionSpec("overview", "o", "Overview", "A line per host, worst first; / filters, "
               "Enter opens one, Esc goes back.",
               footer=False),
    ActionSpec("leave_overview", "escape", "Back", "On the overview: back to the host tab it "
               "came from (a filter is cleared first).", footer=False, key_display="Esc",
               listed=False),
    ActionSpec("close_tab", "ctrl+w", "Close tab", "Close a host's tab opened from the "
               "overview.", footer=False, key_display="^w"),
    ActionSpec("help", "question_mark", "Help", "Show every key and what it does.",
               key_display="?", narrow=True),
    ActionSpec("quit", "q", "Quit", "Leave stackmon (nothing monitored is touched; a demo stops).",
               narrow=True),
)


def shown(spec: ActionSpec, read_only: bool, narrow: bool, one_tab: bool = False) -> bool:
    """Whether the Footer lists this action (read-only: no mutating action; one tab: no tab
    switching)."""
    if (read_only and spec.mutating) or (one_tab and spec.tabs):
        return False
    return spec.footer and (spec.narrow or not narrow)


# What the Footer holds besides the registry's keys: the focused list's own (`⏎ Detail`), the
# command palette's key on its right with its border, and a margin for rounding.
FOOTER_RESERVED = 23


def footer_cells(spec: ActionSpec) -> int:
    """The cells the Footer gives a key: ` K Kill ` (one blank each side, one between)."""
    return len(spec.key_display or spec.keys.split(",")[0]) + len(spec.description) + 3


# The triage keys that give way, in this order, when even they do not fit (below ~80
# columns "q Quit" was cut to "q Qui"): Kill and Quit always stay.
NARROW_DROP = ("toggle_pause", "reload", "worst", "help")


def footer_fit(read_only: bool, width: int, one_tab: bool = False,
               elsewhere: frozenset[str] = frozenset()) -> frozenset[str]:
    """The actions the Footer lists at `width`: the `narrow` ones (fewer on a very narrow
    terminal: NARROW_DROP), then the others in the registry's order while the next one fits
    (in order: skipping one that does not fit for a shorter one after it listed Sort without
    Stack at 84 columns). Below 132 columns it listed only the narrow ones, and at 120 a
    review found s, /, e and t missing beside 45 empty columns. `elsewhere`: actions the
    host view never shows (the overview's), left out of the count."""
    listed = [spec for spec in ACTIONS if spec.name not in elsewhere
              and shown(spec, read_only, narrow=False, one_tab=one_tab)]
    narrow = [spec for spec in listed if spec.narrow]
    room = width - FOOTER_RESERVED - sum(footer_cells(spec) for spec in narrow)
    for name in NARROW_DROP:
        if room >= 0:
            break
        room += sum(footer_cells(spec) for spec in narrow if spec.name == name)
        narrow = [spec for spec in narrow if spec.name != name]
    chosen = {spec.id for spec in narrow}
    for spec in listed:
        if spec.narrow:
            continue
        if footer_cells(spec) > room:
            break
        chosen.add(spec.id)
        room -= footer_cells(spec)
    return frozenset(chosen)


def bindings(read_only: bool = False, narrow: bool = False) -> list[Binding]:
    """Textual bindings for the registry. Read-only keeps the mutating actions' keys (they say
    why they do nothing) out of the Footer; `narrow` keeps only the `narrow` ones there. The
    overview hints come last, hidden: a key runs its hint only when nothing before it acts."""
    keys = [Binding(spec.keys, spec.id, spec.description, show=shown(spec, read_only, narrow),
                    key_display=spec.key_display, id=spec.name) for spec in ACTIONS]
    hints = [Binding(spec.keys, spec.hint_action, spec.description, show=False,
                     key_display=spec.key_display) for spec in ACTIONS if spec.overview_hint]
    return keys + hints


def overview_hint(keys: str) -> ActionSpec:
    """The action whose overview hint the key `keys` runs (its hint binding's argument)."""
    return next(s for s in ACTIONS if s.keys == keys and s.overview_hint)


def host_only() -> frozenset[str]:
    """Actions of one host's view (they have an overview hint): inert on the overview."""
    return frozenset(spec.name for spec in ACTIONS if spec.overview_hint)


def key_label(spec: ActionSpec) -> str:
    return spec.key_display or spec.keys.split(",")[0]
