"""The laptop's cache of uWSGI wheels: compiled once per (uWSGI version, distribution
release, architecture, Python), installed everywhere else.

The first host that needs a build compiles uWSGI into a wheel (tasks/steps/uwsgi.py),
installs it, and the wheel comes back to this machine; every later host with the same
key gets that wheel uploaded and installs it without a compiler, after checking its
SHA-256 on the host against the hash recorded here when it was kept.

    $PYINFRA_FLASK_CACHE/uwsgi/<version>/<key>/<wheel file>          the wheel
    $PYINFRA_FLASK_CACHE/uwsgi/<version>/<key>/<wheel file>.sha256   its hash

`PYINFRA_FLASK_CACHE` defaults to `$XDG_CACHE_HOME/pyinfra-flask` (`~/.cache/...`);
`PYINFRA_FLASK_CACHE=off` turns the cache off (every host compiles, as before).
A wheel that does not match its recorded hash, or is not a uWSGI wheel for its key,
is never uploaded: the host compiles instead, and a warning says which file to remove.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

from pyinfra import logger
from pyinfra.api import FactBase

from tasks import laptop_cache

# The wheel's place on the host while it is built or installed: root's only.
HOST_DIR = "/var/cache/pyinfra-flask/uwsgi"


class WheelKey(FactBase):
    """What a compiled uWSGI depends on, as a bare host can tell it before any package
    is installed: the distribution release and the architecture, e.g. `debian-12-x86_64`.
    The Python is the release's own `python3`; the wheel's tag names it, and the host
    checks it before installing (tasks/steps/uwsgi.py)."""

    def command(self) -> str:
        return '. /etc/os-release; echo "${ID:-linux}-${VERSION_ID:-${VERSION_CODENAME:-unknown}}"; uname -m'

    def process(self, output: list[str]) -> str | None:
        parts = [line.strip().lower() for line in output if line.strip()]
        if len(parts) != 2 or not all(re.fullmatch(r"[a-z0-9._-]+", part) for part in parts):
            return None
        return "-".join(parts)


class Wheel(NamedTuple):
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def python(self) -> str:
        """The wheel's Python tag, e.g. cp311 (from its name, checked against its metadata)."""
        return self.name.split("-")[2]


def cache_root() -> Path | None:
    """Where this machine keeps wheels, or None when the cache is off."""
    if os.environ.get("PYINFRA_FLASK_CACHE", "").lower() == "off":
        return None
    return laptop_cache()


def _directory(version: str, key: str) -> Path | None:
    root = cache_root()
    return root / "uwsgi" / version / key if root else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as wheel:
        for block in iter(lambda: wheel.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_wheel(path: Path, version: str, key: str) -> str:
    """The wheel's proper file name, from its own metadata; ValueError when it is not
    uWSGI `version` built for one CPython on this key's architecture."""
    with zipfile.ZipFile(path) as wheel:
        bad = wheel.testzip()
        if bad:
            raise ValueError(f"{bad} is corrupt")
        infos = [name for name in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/WHEEL", name)]
        if len(infos) != 1:
            raise ValueError("it has no single .dist-info/WHEEL")
        dist_info = infos[0].split("/")[0]
        metadata = wheel.read(f"{dist_info}/METADATA").decode("utf-8", "replace")
        tags = [line.split(":", 1)[1].strip() for line in wheel.read(infos[0]).decode().splitlines()
                if line.startswith("Tag:")]
    fields = dict(line.split(": ", 1) for line in metadata.splitlines() if ": " in line)
    if fields.get("Name", "").lower() != "uwsgi" or fields.get("Version") != version:
        raise ValueError(f"it is {fields.get('Name')} {fields.get('Version')}, not uWSGI {version}")
    arch = key.rsplit("-", 1)[-1]
    if len(tags) != 1 or not re.fullmatch(rf"(cp\d+)-\1-linux_{re.escape(arch)}", tags[0]):
        raise ValueError(f"its tag {tags} is not one CPython's on linux_{arch}")
    return f"{dist_info.rsplit('.dist-info', 1)[0]}-{tags[0]}.whl"


def cached(version: str, key: str | None) -> Wheel | None:
    """The kept wheel for this version and key, if there is one that still matches the
    hash recorded when it was kept."""
    directory = _directory(version, key) if key else None
    if directory is None or not directory.is_dir():
        return None
    for path in sorted(directory.glob("*.whl")):
        record = path.with_name(path.name + ".sha256")
        try:
            recorded = record.read_text().split()[0]
            if path.is_symlink() or not path.is_file() or _sha256(path) != recorded:
                raise ValueError("it does not match the hash recorded when it was kept")
            if _check_wheel(path, version, key) != path.name:
                raise ValueError("its name does not match its metadata")
        except (OSError, IndexError, ValueError, KeyError, zipfile.BadZipFile) as problem:
            logger.warning(f"uWSGI wheel cache: {path} is not used ({problem}); remove it. "
                           "The host compiles uWSGI instead.")
            continue
        return Wheel(path, recorded)
    return None


def incoming(version: str, key: str, host_name: str) -> Path | None:
    """Where a wheel built on a host is downloaded to before it is checked and kept (one
    name per run and host: several hosts may build at once)."""
    directory = _directory(version, key)
    if directory is None:
        return None
    tag = hashlib.sha256(host_name.encode()).hexdigest()[:12]
    return directory.parent / f".incoming-{key}-{os.getpid()}-{tag}.whl"


def keep(downloaded: str, version: str, key: str) -> None:
    """Check a wheel downloaded from the host that built it and keep it under its own
    name with its hash (called by pyinfra on this machine, after the download)."""
    path = Path(downloaded)
    directory = _directory(version, key)
    try:
        name = _check_wheel(path, version, key)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest = _sha256(path)
        # Written beside and renamed: a deploy to other hosts at the same time sees the
        # old state or the new one, never half a wheel.
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as record:
            record.write(f"{digest}  {name}\n")
        os.replace(path, directory / name)
        os.replace(record.name, directory / f"{name}.sha256")
        logger.info(f"uWSGI wheel cache: kept {directory / name} for the next hosts ({key})")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as problem:
        logger.warning(f"uWSGI wheel cache: the wheel built for {key} was not kept ({problem})")
    finally:
        path.unlink(missing_ok=True)
