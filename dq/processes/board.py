"""What a worker has run and not yet recorded, on memory its supervisor shares: when the
worker dies, the supervisor reads which claims' runs began, though their starts or ends
may not be written yet."""

import mmap
import struct
import threading

_SLOT = struct.Struct("q")  # one claim id; 0: free


class RunBoard:
    """Slots on an anonymous shared mapping created before the fork: the worker writes a
    claim id in a free slot as its run begins and clears it once the run's end is written;
    the supervisor reads them after the worker exited. A slot is one aligned 8-byte word,
    written and read whole."""

    def __init__(self, slots: int) -> None:
        self.slots = max(slots, 1)
        self._memory = mmap.mmap(-1, _SLOT.size * self.slots)
        self._free = list(range(self.slots - 1, -1, -1))
        self._lock = threading.Lock()

    def began(self, claim_id: int) -> int | None:
        """Note that ``claim_id``'s run began; returns its slot (None if none is free:
        a worker holds no more claims than its board has slots)."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        _SLOT.pack_into(self._memory, slot * _SLOT.size, claim_id)
        return slot

    def recorded(self, slot: int | None) -> None:
        """The run in ``slot`` has its end written (or will never run): the slot is free."""
        if slot is None:
            return
        _SLOT.pack_into(self._memory, slot * _SLOT.size, 0)
        with self._lock:
            self._free.append(slot)

    def claims(self) -> set[int]:
        """The claim ids of runs begun and not recorded (when the worker died)."""
        ids = (_SLOT.unpack_from(self._memory, n * _SLOT.size)[0] for n in range(self.slots))
        return {claim_id for claim_id in ids if claim_id}

    def close(self) -> None:
        self._memory.close()


def board_slots(threads: int, prefetch: int) -> int:
    """Slots enough for every claim a worker of ``threads`` and ``prefetch`` holds."""
    return 2 * threads + prefetch
