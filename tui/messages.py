"""Messages that carry data into the UI. Pollers only post these; they never touch widgets."""

from __future__ import annotations

from textual.message import Message

from stackmon.model import HostSnapshot


class HostPolled(Message):
    """A new snapshot of one host. A newer one replaces an older one still in the queue, so a
    slow frame never builds a backlog of stale snapshots."""

    def __init__(self, index: int, snapshot: HostSnapshot) -> None:
        super().__init__()
        self.index = index
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HostPolled) and message.index == self.index


class ActionFinished(Message):
    """An action's outcome, for a notification (the next poll shows its effect)."""

    def __init__(self, title: str, text: str, ok: bool) -> None:
        super().__init__()
        self.title = title
        self.text = text
        self.ok = ok


class ReloadProgressed(Message):
    """A new view of a running reload (coalesced: only the newest matters)."""

    def __init__(self, host_index: int, instance: str, progress: object,
                 final: bool = False) -> None:
        super().__init__()
        self.host_index = host_index
        self.instance = instance
        self.progress = progress
        self.final = final

    def can_replace(self, message: Message) -> bool:
        return (isinstance(message, ReloadProgressed) and message.instance == self.instance
                and not message.final)


class DoctorDone(Message):
    """A finished diagnosis of one host (a stackmon.doctor Report)."""

    def __init__(self, host_index: int, report: object) -> None:
        super().__init__()
        self.host_index = host_index
        self.report = report
