"""The local throwaway host started by `make demo` (or `python -m tests.throwaway up`).

    pyinfra inventories/local.py deploy.py
"""

import json
from pathlib import Path

_state_file = Path(__file__).resolve().parent.parent / ".throwaway" / "local.json"
if not _state_file.exists():
    raise SystemExit(
        f"{_state_file} not found: start the throwaway host first with "
        "`python -m tests.throwaway up` (or run `make demo`)."
    )
_state = json.loads(_state_file.read_text())

hosts = [
    (
        _state["name"],
        {key: value for key, value in _state.items() if key.startswith("ssh_")},
    ),
]
