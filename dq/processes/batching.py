import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from django.db import DatabaseError


class BatchWriteError(DatabaseError):
    """The batch an item was written in failed (the writing thread has the cause)."""


@dataclass(slots=True)
class _Entry[Item, Result]:
    item: Item
    taken: bool = False  # by the thread writing its batch
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class GroupCommit[Item, Result]:
    """Write what several threads hand in at about the same time in one call, as a
    database commits concurrent transactions together.

    ``write(items)`` returns one result per item, in order. One batch is written at a
    time (measured: two at once make smaller batches and a slower drain). A thread whose
    item is waiting when no batch is being written takes every item waiting, its own
    included, and writes them; a thread whose item another took waits for that write.
    ``submit`` returns once the item's own batch is written, so a caller never goes on
    before its write is done.
    """

    def __init__(self, write: Callable[[list[Item]], Iterable[Result]]) -> None:
        self._write = write
        self._writing = False
        self._changed = threading.Condition()
        self._waiting: list[_Entry[Item, Result]] = []

    def submit(self, item: Item) -> Result:
        entry: _Entry[Item, Result] = _Entry(item)
        with self._changed:
            self._waiting.append(entry)
            while not entry.taken and self._writing:
                self._changed.wait()
            wrote = not entry.taken
            if wrote:
                batch, self._waiting = self._waiting, []
                for waiting in batch:
                    waiting.taken = True
                self._writing = True
        if wrote:
            self._write_batch(batch)
        with self._changed:
            while not entry.done:
                self._changed.wait()
        if entry.error is not None:
            if wrote:
                raise entry.error
            raise BatchWriteError(f"The batch this item was written in failed: {entry.error}")
        return cast(Result, entry.result)  # done without an error: set by its batch's write

    def _write_batch(self, batch: list[_Entry[Item, Result]]) -> None:
        results: list[Result] = []  # read only once written without an error
        error: BaseException | None = None
        try:
            results = list(self._write([waiting.item for waiting in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except BaseException as failure:
            error = failure
        with self._changed:
            for n, waiting in enumerate(batch):
                if error is not None:
                    waiting.error = error
                else:
                    waiting.result = results[n]
                waiting.done = True
            self._writing = False
            self._changed.notify_all()
