"""The deploy's building blocks, in wings by kind; `deploy.py` composes them.

    config/   what a host's data means: the settings schema, checks, the resolved
              App, the Host (role and host-wide values), topology, the inventory
              reader. Adds no operation.
    steps/    pyinfra operations, one concern per module, with the facts they read.
    run/      around a run: the deploy lock, the fact batch, hooks, preflight,
              barriers, outcomes.
    roles/    one composer per host role (app server, balancer, database server).
    ops/      ops.py's library: fleet, status, logs, exec, audit, backups.

Imports run one way, down this order:

    roles, run, ops  ->  steps  ->  config  ->  tasks (this package, identity.py, tool.py)

roles, run and ops import config and steps, never each other; steps import config,
never run, roles or ops; config imports nothing above it. identity.py (the run's
id and who runs it) and tool.py (the host tool, files/release_tool/: built as one
file, loaded, and the only builder of its command lines) sit at the bottom with this
package's paths, so that steps may name the run and call the tool. The scripts (deploy.py, ops.py,
rollout.py, rollback.py, releases.py) are above everything.
"""

import os
import sys
from pathlib import Path

# pyinfra's command line switches bytecode caching off for its whole process (it runs
# deploy.py and the inventories as files, which are never cached anyway). This package
# is imported: compiling its ~70 modules from source on every run cost ~0.1 s of a
# ~1.3 s run that changes nothing. Python's default comes back for the imports that
# follow (each module's cache written once, beside it, as any import does), unless
# the user asked for none (`-B`, PYTHONDONTWRITEBYTECODE).
if not sys.flags.dont_write_bytecode:
    sys.dont_write_bytecode = False

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = REPO_ROOT / "templates"


def laptop_cache() -> Path:
    """This machine's cache for the deploy, outside any checkout: uWSGI's wheels
    (tasks/steps/uwsgi_wheel.py) and the fact lists (tasks/run/prefetch.py). Set by
    PYINFRA_FLASK_CACHE, else $XDG_CACHE_HOME/pyinfra-flask (~/.cache/pyinfra-flask);
    `PYINFRA_FLASK_CACHE=off` turns only the wheels off, so the lists stay here."""
    setting = os.environ.get("PYINFRA_FLASK_CACHE", "")
    if setting and setting.lower() != "off":
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyinfra-flask"


# Templates drop the lines their {% %} tags stand on, so the files they render read
# like hand-written config.
JINJA = {"trim_blocks": True, "lstrip_blocks": True}


def render(name: str, **context) -> str:
    """A template's text, as files.template renders it: for files written as secrets, and
    for the host-less tests to read."""
    import jinja2

    return jinja2.Environment(**JINJA).from_string((TEMPLATES / name).read_text()).render(**context)
