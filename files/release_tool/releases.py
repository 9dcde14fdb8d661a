"""The releases in <app_root>/releases, the live one (`current`), switching it, removing one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import base, history


# Releases -----------------------------------------------------------------

def releases() -> list[str]:
    """Complete releases, oldest first (a deploy interrupted while unpacking leaves
    a directory without metadata: not a release; prune removes it)."""
    if not base.RELEASES.is_dir():
        return []
    return sorted(p.name for p in base.RELEASES.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / base.META).is_file())


def live() -> str | None:
    try:
        return Path(os.readlink(base.CURRENT)).name
    except OSError:
        return None


def release_dir(release: str) -> Path:
    path = base.RELEASES / release
    if release.startswith(".") or "/" in release or not (path / base.META).is_file():
        raise base.Failure(f"no release {release!r} in {base.RELEASES} (see: release-tool list)")
    return path


def venv_of(release: str) -> str:
    return os.path.realpath(base.RELEASES / release / ".venv")


def switch(release: str) -> None:
    """Point `current` at a release atomically: a new link renamed over the old
    one, so there is no moment without a `current`."""
    release_dir(release)
    tmp = base.ROOT / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, base.CURRENT)
    base.log(f"current -> releases/{release}")


def discard(release: str) -> None:
    if release == live():
        raise base.Failure(f"refusing to remove the live release {release}")
    shutil.rmtree(base.RELEASES / release, ignore_errors=True)
    history.record("removed", release)
    base.log(f"removed release {release}")
