"""The local throwaway host started by `./run demo` (or `python -m dev.throwaway up`).

    pyinfra inventories/local.py deploy.py
"""

import json
from pathlib import Path

_state_file = Path(__file__).resolve().parent.parent / ".throwaway" / "local.json"
if not _state_file.exists():
    raise SystemExit(
        f"{_state_file} not found: start the throwaway host first with `./run demo`."
    )
_state = json.loads(_state_file.read_text())

# How to reach it: over SSH as a sudo user, like the inventories of real servers.
hosts = [
    (
        _state["name"],
        {key: value for key, value in _state.items() if key.startswith("ssh_") or key == "_sudo"},
    ),
]
