"""What a worker is running, on memory its supervisor shares: when the worker dies, the
supervisor reads which claims were running, though their starts may not be written yet."""

import mmap
import struct

_SLOT = struct.Struct("q")  # one claim id per thread; 0: idle


class RunBoard:
    """One slot per thread of a worker, on an anonymous shared mapping created before the
    fork: the worker writes the claim id each thread runs, the supervisor reads them after
    the worker exited. A slot is one aligned 8-byte word, written and read whole."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._memory = mmap.mmap(-1, _SLOT.size * max(threads, 1))

    def running(self, slot: int, claim_id: int) -> None:
        _SLOT.pack_into(self._memory, slot * _SLOT.size, claim_id)

    def idle(self, slot: int) -> None:
        _SLOT.pack_into(self._memory, slot * _SLOT.size, 0)

    def claims(self) -> set[int]:
        """The claim ids running now (or when the worker died)."""
        ids = (_SLOT.unpack_from(self._memory, n * _SLOT.size)[0] for n in range(self.threads))
        return {claim_id for claim_id in ids if claim_id}

    def close(self) -> None:
        self._memory.close()
