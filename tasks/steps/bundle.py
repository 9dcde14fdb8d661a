"""A release as built on the laptop (tasks/steps/release.py ships it): the app's
files sorted out (tasks/config/release_exclude.py: what never ships), its loader,
the links to the venv and the shared paths, its metadata and id, in one tarball
built once per run and app for every host that deploys it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from pyinfra import host
from pyinfra.api import DeployError

from tasks import TEMPLATES, identity
from tasks.config.release_exclude import (configured_secrets, holds_private_key, read_regular, refusal,
                                          report_left_out, sort_out)

META = ".deploy-release.json"
LOADER = ".deploy-loader.py"


@dataclass(frozen=True)
class Bundle:
    """A release as built locally: what identifies it, what it holds, and (made when first
    asked for: a run whose release is live already never needs them) its id and tarball."""

    content_hash: str
    venv_hash: str
    # path -> {"sha256", "mode", "size"} of every regular file in the release (the
    # loader too), as also written to its metadata: what `--diff` compares.
    files: dict[str, dict]
    shared: tuple[str, ...]
    left_out: tuple[str, ...]  # secrets found in app_source and kept on the laptop
    build: Callable[[], tuple[str, bytes]]  # -> (id, tarball)

    @cached_property
    def _built(self) -> tuple[str, bytes]:
        return self.build()

    @property
    def id(self) -> str:
        return self._built[0]

    @property
    def tar(self) -> bytes:
        return self._built[1]

    def contents(self, paths) -> dict[str, bytes]:
        """The bytes the release holds at each of `paths`, as they are in the tarball."""
        wanted, found = set(paths), {}
        with tarfile.open(fileobj=io.BytesIO(self.tar)) as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[member.name] = tar.extractfile(member).read()
        return found


@dataclass(frozen=True)
class _Source:
    rel: str
    data: bytes
    mode: int  # as the release holds it
    mtime: float
    exec_bits: int  # as on the laptop (what the content hash has always used)


def _select(source: Path, shared: set[str], never: frozenset[str],
            app_source: str) -> tuple[list[_Source], list[str]]:
    """The files of `source` that go into a release, and the secrets left out
    (tasks/config/release_exclude.py), in order. No link is followed, no special file opened:
    either refuses the whole release (the settings check has already said so)."""
    tree = sort_out(source, shared, never)
    if tree.refused:
        raise DeployError(refusal(app_source, tree.refused))
    chosen, left_out = [], []
    for rel, path in tree.seen:
        if path is None:
            left_out.append(rel)
            continue
        data, info = read_regular(path, rel, app_source)
        if holds_private_key(data):
            left_out.append(rel)
            continue
        chosen.append(_Source(rel, data, 0o750 if info.st_mode & 0o100 else 0o640, info.st_mtime,
                              info.st_mode & 0o111))
    chosen.sort(key=lambda f: Path(f.rel))
    return chosen, left_out


def _git_commit(source: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _loader(app) -> str:
    return _loader_template().render(s=app)


@cache  # compiled once per run, rendered for every host
def _loader_template():
    from jinja2 import Template

    return Template((TEMPLATES / "loader.py.j2").read_text(), keep_trailing_newline=True,
                    trim_blocks=True, lstrip_blocks=True)


def new_release_id(*parts: str | None) -> str:
    """A release id (settings.RELEASE_ID_RE): the deploying machine's UTC time (for
    people; the host orders releases by its own record, not by name), then `parts`."""
    return "-".join([time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), *(part for part in parts if part)])


@cache
def _release_id(commit: str | None) -> str:
    # One id per pyinfra run, the same on every host of the run: the time, the
    # commit, and the run's id, so two runs in the same second never share an id.
    # A rollout names one for all its runs instead (the `release_id` setting).
    return new_release_id(commit, identity.RUN_ID)


def build_bundle(app) -> Bundle:
    return _bundle(id(host.state), app.source_dir, tuple(sorted(app.shared_paths)), app.app_requirements, _loader(app),
                   app.app_root, str(app.app_source), configured_secrets(app), app.release_id)


@cache  # the hosts of one run (one pyinfra state) that deploy the same app share one build
def _bundle(run: int, source: Path, shared_paths: tuple[str, ...], app_requirements: str, loader_text: str,
            app_root: str, app_source: str, never: frozenset[str] = frozenset(),
            named: str | None = None) -> Bundle:
    shared = {path.rstrip("/") for path in shared_paths}
    files_in, left_out = _select(source, shared, never, app_source)
    report_left_out(app_source, left_out)
    requirements, _ = read_regular(source / app_requirements, app_requirements, app_source)
    venv_hash = hashlib.sha256(requirements).hexdigest()[:16]
    loader = loader_text.encode()

    digest = hashlib.sha256()
    for f in files_in:
        digest.update(f"{f.rel}\0{f.exec_bits}\0".encode() + f.data + b"\0")
    digest.update(loader + b"\0" + venv_hash.encode() + b"\0" + "\0".join(shared_paths).encode())
    content_hash = digest.hexdigest()

    manifest = {f.rel: _entry(f.data, f.mode) for f in files_in}
    manifest[LOADER] = _entry(loader, 0o640)

    def build() -> tuple[str, bytes]:
        """The release's id (the git commit and this moment) and its tarball."""
        commit = _git_commit(source)
        release_id = named or _release_id(commit)
        meta = json.dumps({"id": release_id, "content_hash": content_hash, "venv": venv_hash,
                           "commit": commit, "source": app_source, "shared": sorted(shared),
                           "files": manifest}, indent=1).encode()

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            now = int(time.time())

            def add(name: str, data: bytes | None = None, link: str | None = None,
                    mode: int = 0o640, mtime: float = now):
                info = tarfile.TarInfo(name)
                # Real modification times: nginx derives Last-Modified and ETag from them.
                info.mtime = int(mtime)
                if link is not None:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                    tar.addfile(info)
                elif data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o750
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), mode
                    tar.addfile(info, io.BytesIO(data))

            directories = {parent for f in files_in for parent in Path(f.rel).parents} - {Path(".")}
            for directory in sorted(directories):
                add(str(directory))
            for f in files_in:
                add(f.rel, f.data, mode=f.mode, mtime=f.mtime)
            add(LOADER, loader)
            add(META, meta)
            add(".venv", link=f"{app_root}/venvs/{venv_hash}")
            for path in sorted(shared):
                add(path, link=f"{app_root}/shared/{path}")
        return release_id, buffer.getvalue()

    return Bundle(content_hash, venv_hash, files=manifest, shared=tuple(sorted(shared)), left_out=tuple(left_out),
                  build=build)


def _entry(data: bytes, mode: int) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "mode": f"{mode:o}", "size": len(data)}
