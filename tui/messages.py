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
