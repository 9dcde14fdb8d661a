"""How each host's pyinfra run ended, written by the run itself, for rollout.py.

rollout.py runs `pyinfra INVENTORY tasks/run/record_outcomes.py deploy.py ...` with
OUTCOMES_ENV naming a file. tasks/run/record_outcomes.py adds no operation: it calls
`record(host)`, which registers a pyinfra state callback (public API:
`BaseStateCallback`, `State.add_callback_handler`). That callback writes one JSON
line per host when pyinfra disconnects from it (at the end of every run, also a
failed, aborted or dry one): the stage the run had reached (`StateStage`) and
whether the host is in `state.failed_hosts`. Hosts that could not be reached are
written when the file is loaded (pyinfra has connected by then, and failed them).

`read()` turns the file back into {host name: Outcome}. A host is done only when
its line says so: the run reached the stage that follows the one asked for
(Disconnect after executing, Prepare for --dry) and the host did not fail. A host
without a line (the run died before it got there) counts as not done.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pyinfra.api import BaseStateCallback
from pyinfra.api.state import StateStage

OUTCOMES_ENV = "PYINFRA_FLASK_OUTCOMES"


@dataclass(frozen=True)
class Outcome:
    host: str
    stage: str  # the run's StateStage name when it left the host
    failed: bool  # in pyinfra's state.failed_hosts

    def done(self, dry: bool) -> bool:
        wanted = StateStage.Prepare if dry else StateStage.Disconnect
        return not self.failed and self.stage == wanted.name


def record(host) -> None:
    """Write this run's per-host outcomes to the file OUTCOMES_ENV names (no-op without it)."""
    path = os.environ.get(OUTCOMES_ENV)
    state = host.state
    if not path or any(isinstance(handler, _Recorder) for handler in state.callback_handlers):
        return
    recorder = _Recorder(path)
    state.add_callback_handler(recorder)
    for unreachable in state.failed_hosts:
        recorder.write(unreachable.name, StateStage.Connect, failed=True)


class _Recorder(BaseStateCallback):
    def __init__(self, path: str):
        self.path = path

    def write(self, name: str, stage: StateStage, failed: bool) -> None:
        line = json.dumps({"host": name, "stage": stage.name, "failed": failed})
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def host_disconnect(self, state, host) -> None:
        self.write(host.name, state.current_stage, failed=host in state.failed_hosts)


def read(path: Path) -> dict[str, Outcome]:
    """The outcomes a run wrote, by host name (the last line for a host wins)."""
    found: dict[str, Outcome] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        found[entry["host"]] = Outcome(entry["host"], entry["stage"], bool(entry["failed"]))
    return found
