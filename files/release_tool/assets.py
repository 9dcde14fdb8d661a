"""The static files nginx serves: the live release's first, then those of the other
kept releases, newest first, in one directory of root's (<app_root>/assets/live).

Pages rendered before a switch (by workers still on the old code during the chain
reload, or held by browsers) name the assets of their own release: with fingerprinted
names (`app.3f9a.js`) those are gone from the new one. So nginx serves a merge of the
kept releases' static directories, rebuilt at every activation (rollback included) and
prune: a name the live release has is its file; a name only older releases have is the
newest one's; a name no kept release has is a 404. The merge is made of hard links to
the releases' own files (root's, never the app user's), in directories of root's, with
no symbolic link below `live` (links in a release, such as a shared path inside the
static directory, are left out: nginx serves those from their own directory). It is
built beside the one nginx serves and switched in by renaming a link, so nginx never
sees half of one and needs no reload; the one before stays until the next rebuild, for
a request that was already on its way through it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from pathlib import Path

from . import base, history, releases

# Behind load balancers uWSGI serves the merge (its static-map2 resolves the directory it
# names once per worker, the files below it on every request): `url/<static URL>` is
# root's link to `live`, made by the deploy (tasks/steps/release.py).
URLS = "url"


def assets_dir() -> Path:
    return base.ROOT / "assets"


def order(first: str | None) -> list[str]:
    """`first` (the release about to be, or being, live), then the other complete
    releases, the most recently live (by the host's record) first."""
    present = releases.releases()
    last: dict[str, int] = {}
    for index, entry in enumerate(history.read_history()):
        if entry["event"] != "removed":
            last[entry["release"]] = index
    rest = sorted((name for name in present if name != first), key=lambda name: (last.get(name, -1), name),
                  reverse=True)
    return ([first] if first in present else []) + rest


def _static_of(release: str) -> Path | None:
    """The release's static directory, if every part of its path is a real directory."""
    path = base.RELEASES / release
    for part in Path(base.CONFIG.get("static_dir", "")).parts:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except FileNotFoundError:
            return None
    return path


def _merge(source: Path, target: Path) -> int:
    """Link into `target` what `source` has and `target` does not yet (names already
    there, from a release that comes first, win). Links and special files are left out."""
    added = 0
    with os.scandir(source) as found:
        entries = sorted(found, key=lambda entry: entry.name)
    for entry in entries:
        dest = target / entry.name
        info = entry.stat(follow_symlinks=False)
        try:
            there = os.lstat(dest).st_mode
        except FileNotFoundError:
            there = None
        if stat.S_ISDIR(info.st_mode):
            if there is None:
                os.mkdir(dest, 0o700)
                os.chown(dest, os.geteuid(), info.st_gid)
                os.chmod(dest, stat.S_IMODE(info.st_mode) & 0o755)
            elif not stat.S_ISDIR(there):
                continue
            added += _merge(Path(entry.path), dest)
        elif stat.S_ISREG(info.st_mode) and there is None:
            try:
                os.link(entry.path, dest, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(entry.path, dest, follow_symlinks=False)
                os.chown(dest, os.geteuid(), info.st_gid, follow_symlinks=False)
            added += 1
    return added


def rebuild(first: str | None) -> None:
    """Serve `first`'s static files, then the other kept releases' (see above)."""
    top = assets_dir()
    if not base.CONFIG.get("static_dir"):
        # nginx serves no static files from the releases (none, or all in a shared path).
        if top.is_dir() and not top.is_symlink():
            shutil.rmtree(top)
        return
    try:
        _rebuild(top, order(first))
    except OSError as exc:
        raise base.Failure(f"could not build the static files nginx serves in {top}: {exc}") from None


def _rebuild(top: Path, names: list[str]) -> None:
    if not top.exists():
        os.mkdir(top, 0o750)
        os.chown(top, os.geteuid(), os.lstat(base.RELEASES).st_gid)
    info = os.lstat(top)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise base.Failure(f"refusing {top}: not a directory of uid {os.geteuid()}")
    build = top / f"build-{time.time_ns()}"
    os.mkdir(build, 0o700)
    sources = [(name, _static_of(name)) for name in names]
    sources = [(name, path) for name, path in sources if path is not None]
    if sources:
        first = os.lstat(sources[0][1])
        os.chown(build, os.geteuid(), first.st_gid)
        os.chmod(build, stat.S_IMODE(first.st_mode) & 0o755)
    else:
        os.chown(build, os.geteuid(), os.lstat(top).st_gid)
        os.chmod(build, 0o750)
    files = {name: _merge(path, build) for name, path in sources}
    live = top / "live"
    try:
        before = os.readlink(live)
    except OSError:
        before = None
    tmp = top / f".live.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(build.name, tmp)
    os.replace(tmp, live)
    for path in top.iterdir():
        if path.name not in ("live", URLS, build.name, before):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    summary = ", ".join(f"{count} from {name}" for name, count in files.items() if count)
    base.log(f"static files served: {summary or 'none'}")
