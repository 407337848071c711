import threading
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError


class BatchWriteError(DatabaseError):
    """The batch an item was written in failed (the writing thread has the cause)."""


@dataclass(slots=True)
class _Entry:
    item: Any
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Write what several threads hand in at about the same time in one call, as a
    database commits concurrent transactions together.

    ``write(items)`` returns one result per item, in order. A thread that finds no write
    under way writes every item waiting, its own included; threads that arrive meanwhile
    wait for it, then find theirs written or write the next batch. ``submit`` returns once
    the item's own batch is written, so a caller never goes on before its write is done.
    """

    def __init__(self, write):
        self._write = write
        self._writing = threading.Lock()  # held by the thread writing a batch
        self._waiting_lock = threading.Lock()
        self._waiting = []

    def submit(self, item):
        entry = _Entry(item)
        with self._waiting_lock:
            self._waiting.append(entry)
        wrote = False
        with self._writing:
            if not entry.done:
                wrote = True
                with self._waiting_lock:
                    batch, self._waiting = self._waiting, []
                try:
                    results = self._write([waiting.item for waiting in batch])
                except BaseException as error:
                    for waiting in batch:
                        waiting.error = error
                        waiting.done = True
                else:
                    for waiting, result in zip(batch, results, strict=True):
                        waiting.result = result
                        waiting.done = True
        if entry.error is not None:
            if wrote:
                raise entry.error
            raise BatchWriteError(f"The batch this item was written in failed: {entry.error}")
        return entry.result
