"""The test hosts' `exec` (dev/throwaway), host-less: a container whose exec stream
loses its output, as Docker's sometimes does, still gives the command's output and
status, and the command runs once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dev import throwaway


class FlakyContainer:
    """Runs each exec on this machine; the first `lose` streams come back empty, the next
    `chop` without their first bytes."""

    def __init__(self, lose: int = 0, chop: int = 0):
        self.lose, self.chop = lose, chop
        self.calls = 0

    def exec_run(self, argv, demux=False):
        self.calls += 1
        done = subprocess.run(argv, capture_output=True)
        if self.lose:
            self.lose -= 1
            return done.returncode, b""
        if self.chop:  # the stream's start lost, its end (the marker) kept
            self.chop -= 1
            return done.returncode, (done.stdout + done.stderr)[7:]
        return done.returncode, done.stdout + done.stderr


def host(container) -> throwaway.Host:
    return throwaway.Host(container=container, name="fake", ssh_port=0, http_port=0, key_path=Path("/dev/null"))


def test_output_and_status_come_back(tmp_path):
    h = host(FlakyContainer())
    assert h.exec("printf 'a\\nb'; echo err >&2") == "a\nberr\n"
    assert h.exec("exit 3", check=False) == ""
    with pytest.raises(throwaway.ThrowawayError, match=r"\(4\)"):
        h.exec("echo no; exit 4")


def test_lost_output_is_read_again_without_running_the_command_again(tmp_path):
    runs = tmp_path / "runs"
    h = host(FlakyContainer(lose=2))
    assert h.exec(f"echo x >> {runs}; echo answer") == "answer\n"
    assert runs.read_text() == "x\n"  # run once, read three times
    assert h.container.calls == 3


def test_output_lost_every_time_is_an_error_not_an_empty_answer():
    h = host(FlakyContainer(lose=throwaway.EXEC_READS))
    with pytest.raises(throwaway.ThrowawayError, match="could not be read back"):
        h.exec("echo answer")


def test_files_read_are_removed_by_the_next_call():
    h = host(FlakyContainer())
    h.exec("true")
    first = [Path(f) for f in h.exec_files_read]
    assert all(f.exists() for f in first) and oct(first[0].stat().st_mode & 0o777) == "0o600"
    h.exec("true")
    assert not any(f.exists() for f in first)
    for f in h.exec_files_read:
        Path(f).unlink()


def test_output_whose_start_was_lost_is_read_again():
    h = host(FlakyContainer(chop=1))
    assert h.exec("echo active") == "active\n"
    assert h.container.calls == 2
