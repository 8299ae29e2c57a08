"""The one model slot: one model call (encode or generate) at a time, first come first served.

Every Studio on a pipeline takes its turn here, so many workspaces can share one GPU. A caller
waiting for its turn is told its place in line, can give up (its Cancel), and is refused at
once when too many already wait. The slot is re-entrant: a generation that encodes a changed
character on the way keeps its turn.

    slot = ModelSlot(max_waiting=20)
    with slot.turn(on_wait=lambda ahead: print(f"{ahead} ahead of you"), cancel=event):
        pipeline(...)
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator


class QueueFull(ValueError):
    """Too many jobs already wait for the model; nothing was started."""


class TurnCancelled(Exception):
    """The caller cancelled while it waited for its turn."""


class ModelSlot:
    def __init__(self, max_waiting: int | None = None, poll_s: float = 0.25):
        self.max_waiting = max_waiting
        self.poll_s = poll_s
        self._condition = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._line: deque[object] = deque()

    @property
    def waiting(self) -> int:
        """Callers in line (not counting the one whose turn it is)."""
        with self._condition:
            return len(self._line)

    @contextlib.contextmanager
    def turn(
        self,
        *,
        on_wait: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[None]:
        """Hold the model for the block; wait in line first when another caller holds it.

        `on_wait(ahead)` is called (outside the slot's lock) whenever the number of callers ahead
        changes, starting with the first wait; `cancel` set while waiting raises TurnCancelled.
        Raises QueueFull, without waiting, when `max_waiting` callers already wait.
        """
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:  # re-entrant: the holder calls the model again
                self._depth += 1
                reentered = True
            else:
                reentered = False
                if self._owner is not None and self.max_waiting is not None and len(self._line) >= self.max_waiting:
                    raise QueueFull(
                        f"the queue is full: {len(self._line)} generations are waiting for the model; "
                        "try again in a few minutes"
                    )
                ticket = object()
                self._line.append(ticket)
        if not reentered:
            self._wait_for(ticket, me, on_wait, cancel)
        try:
            yield
        finally:
            with self._condition:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._condition.notify_all()

    def _wait_for(self, ticket, me: int, on_wait, cancel) -> None:
        told = None
        while True:
            with self._condition:
                if self._owner is None and self._line[0] is ticket:
                    self._line.popleft()
                    self._owner, self._depth = me, 1
                    return
                if cancel is not None and cancel.is_set():
                    self._line.remove(ticket)
                    self._condition.notify_all()
                    raise TurnCancelled("cancelled while waiting for the model")
                ahead = self._line.index(ticket) + (self._owner is not None)
                if ahead == told or on_wait is None:
                    self._condition.wait(self.poll_s)
                    continue
            told = ahead
            on_wait(ahead)
