"""The board a worker shares with its supervisor: the claims whose runs began and whose ends
are not written, readable after the worker is gone."""

import os
import subprocess
import sys
from pathlib import Path

from dq.processes.board import RunBoard

ROOT = Path(__file__).resolve().parents[2]


def test_a_claim_is_on_the_board_from_its_start_until_its_end_is_recorded():
    board = RunBoard(3)
    first = board.began(11)
    board.began(12)
    assert board.claims() == {11, 12}

    board.recorded(first)

    assert board.claims() == {12}
    assert board.began(13) is not None and board.claims() == {12, 13}


def test_a_full_board_takes_no_more_claims_and_a_recorded_slot_is_reused():
    board = RunBoard(1)
    slot = board.began(1)
    assert board.began(2) is None
    board.recorded(None)  # a run that got no slot
    board.recorded(slot)
    assert board.began(3) == slot and board.claims() == {3}


def test_what_a_forked_worker_wrote_is_read_after_it_died():
    """In a process of its own, with one thread, as the supervisor is when it forks."""
    program = """
import os
import subprocess
import sys
from pathlib import Path
from dq.processes.board import RunBoard

board = RunBoard(4)
pid = os.fork()
if pid == 0:  # the worker: two runs begun, one of them recorded, then gone
    board.recorded(board.began(21))
    board.began(22)
    os._exit(0)
os.waitpid(pid, 0)
print(sorted(board.claims()))
"""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[22]"), done.stderr
