"""tasks/__init__.py: under pyinfra's command line (which turns bytecode caching off
for its process) the deploy's modules still get Python's cache, unless the user
asked for none."""

from __future__ import annotations

import os
import subprocess
import sys

from tasks import REPO_ROOT

# As pyinfra's main() leaves the process, then the deploy's imports.
# (Two modules that import only the standard library: with a cache prefix of its own,
# the child compiles everything it imports.)
IMPORTS = "import sys; sys.dont_write_bytecode = True; import tasks.identity, tasks.config.reserved"


def _cached(tmp_path, *flags: str, env: dict | None = None) -> list[str]:
    prefix = tmp_path / "pycache"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    environment.update({"PYTHONPYCACHEPREFIX": str(prefix), **(env or {})})
    subprocess.run([sys.executable, *flags, "-c", IMPORTS], cwd=REPO_ROOT, env=environment, check=True)
    tasks = prefix / (REPO_ROOT / "tasks").relative_to("/")
    return sorted(path.relative_to(tasks).as_posix().split(".")[0] for path in tasks.rglob("*.pyc"))


def test_the_deploys_modules_are_cached_though_pyinfra_turned_caching_off(tmp_path):
    cached = _cached(tmp_path)
    # tasks/__init__.py itself is compiled before it turns caching back on.
    assert cached == ["config/__init__", "config/reserved", "identity"]


def test_no_cache_is_written_when_the_user_asked_for_none(tmp_path):
    assert _cached(tmp_path / "env", env={"PYTHONDONTWRITEBYTECODE": "1"}) == []
    assert _cached(tmp_path / "flag", "-B") == []
