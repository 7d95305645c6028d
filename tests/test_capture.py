"""paddle_model.capture: what C++ code and child processes write to file descriptors 1 and 2 is
caught, the descriptors come back whatever happens, and each user keeps its own behaviour (the
kernels' build log tail in the error, the evaluate runner's held-back lines shown on failure)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paddle_model.capture import CAPTURE_LIMIT, Caught, caught_fds
from paddle_model.evaluate import runner
from paddle_model.kernels import _quiet

_CHILD = "import os; os.write(1, b'child out\\n'); os.write(2, b'child err\\n')"


def test_a_child_process_writes_to_both_descriptors_are_caught(capfd):
    log = Caught()
    with caught_fds(log, 1, 2):
        subprocess.run([sys.executable, "-c", _CHILD], check=True)
    assert log.text.splitlines() == ["child out", "child err"]
    assert capfd.readouterr() == ("", "")


def test_the_descriptors_are_restored_after_the_block_raises(capfd):
    log = Caught()
    with pytest.raises(KeyError), caught_fds(log, 2):
        os.write(2, b"inside\n")
        raise KeyError("x")
    os.write(2, b"after\n")
    assert log.text == "inside\n"
    assert capfd.readouterr().err == "after\n"


def test_only_the_end_of_a_long_output_is_kept():
    log = Caught()
    with caught_fds(log, 2):
        os.write(2, b"x" * (CAPTURE_LIMIT + 100) + b"END")
    assert len(log.data) == CAPTURE_LIMIT
    assert log.data.endswith(b"xEND")


def test_a_failed_kernel_build_names_the_end_of_its_log():
    with pytest.raises(RuntimeError, match=r"^linking failed; build log: .*child err$"), _quiet():
        subprocess.run([sys.executable, "-c", _CHILD], check=True)
        raise OSError("linking failed")


def test_the_runners_held_back_lines_are_shown_only_on_failure(capfd):
    with runner._quiet_stderr():
        os.write(2, b"rendezvous ok\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ValueError), runner._quiet_stderr():
        os.write(2, b"rendezvous failed\n")
        raise ValueError("no peer")
    assert capfd.readouterr().err == "rendezvous failed\n"
