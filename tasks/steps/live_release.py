"""The live release's files, read on the host for `--dry --diff` (tasks/steps/release_preview.py):
its file list, or the contents of some of its files, by a reader run with the host's
python3, never following a link."""

from __future__ import annotations

import base64
import json
import shlex

from pyinfra.api import FactBase

MAX_FILE_BYTES = 256 * 1024  # a file larger than this is named, not diffed
MAX_FETCH_BYTES = 2 * 1024 * 1024  # the host's copies read for one preview, at most

# Runs on the host (its python3, standard library only, as root): the live release's
# file list, or the contents of some of its files. Files are opened without following
# any link on the way (a release holds links into the app-writable shared/ directory)
# and read only when they are regular files.
HOST_READER = r'''
import base64, hashlib, json, os, stat, sys

NOFOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)


def open_in(top, rel):
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    fd = os.open(top, NOFOLLOW | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, NOFOLLOW | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        handle = os.open(parts[-1], NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode):
        os.close(handle)
        return None
    return handle, info


def read(handle, limit):
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(handle, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    os.close(handle)
    data = b"".join(chunks)
    return None if len(data) > limit else data


def manifest(root):
    try:
        target = os.readlink(os.path.join(root, "current"))
    except OSError:
        return None
    release = target[len("releases/"):] if target.startswith("releases/") else ""
    if not release or "/" in release or release.startswith("."):
        return {"error": "current points at %r, not at a release" % target}
    top = os.path.join(root, "releases", release)
    opened = open_in(top, ".deploy-release.json")
    try:
        meta = json.loads(read(*opened[:1], limit=64 << 20).decode()) if opened else {}
    except (ValueError, AttributeError):
        meta = {}
    files = meta.get("files") if isinstance(meta, dict) else None
    computed = not isinstance(files, dict)
    if computed:
        files = {}
        for dirpath, dirnames, filenames in os.walk(top):  # links to directories: not entered
            base = os.path.relpath(dirpath, top)
            for name in filenames:
                rel = name if base == "." else base + "/" + name
                opened = None if rel == ".deploy-release.json" else open_in(top, rel)
                if opened:
                    handle, info = opened
                    digest = hashlib.sha256()
                    for chunk in iter(lambda: os.read(handle, 1 << 20), b""):
                        digest.update(chunk)
                    os.close(handle)
                    files[rel] = {"sha256": digest.hexdigest(), "mode": "%o" % stat.S_IMODE(info.st_mode),
                                  "size": info.st_size}
    return {"id": release, "files": files, "shared": meta.get("shared") if isinstance(meta, dict) else None,
            "computed": computed}


def contents(root, release, paths, limit, total):
    top = os.path.join(root, "releases", release)
    found = {}
    for rel in paths:
        opened = open_in(top, rel)
        data = read(opened[0], min(limit, total)) if opened else None
        if data is not None:
            total -= len(data)
            found[rel] = base64.b64encode(data).decode()
        else:
            found[rel] = None
    return found


try:
    if sys.argv[1] == "manifest":
        answer = manifest(sys.argv[2])
    else:
        answer = contents(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
except Exception as exc:
    answer = {"error": "%s: %s" % (type(exc).__name__, exc)}
print(json.dumps(answer))
'''


def _host_python(app_root: str, *arguments: str) -> str:
    """The reader's command. Without a live release (`current`), it answers null
    without python3 (a bare host has none yet)."""
    quoted = " ".join(shlex.quote(argument) for argument in (*arguments[:1], app_root, *arguments[1:]))
    current = shlex.quote(f"{app_root}/current")
    return (f"if ! [ -L {current} ]; then echo null; "
            f"elif command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(HOST_READER)} {quoted}; "
            "else echo '{\"error\": \"the host has no python3\"}'; fi")


def _json(output: list[str]):
    try:
        return json.loads("".join(output))
    except ValueError:
        return {"error": "unreadable answer from the host"}


class LiveReleaseFiles(FactBase):
    """The live release's files: {"id", "files": {path: {"sha256", "mode", "size"}},
    "shared", "computed"}; None when there is no live release; {"error": ...} when
    it cannot be read."""

    def command(self, app_root: str) -> str:
        return _host_python(app_root, "manifest")

    def process(self, output: list[str]):
        return _json(output)


class ReleaseFileContents(FactBase):
    """{path: bytes, or None (missing, not a regular file, too large)} for some files
    of a release."""

    def command(self, app_root: str, release: str, paths: tuple[str, ...]) -> str:
        return _host_python(app_root, "contents", release, json.dumps(list(paths)),
                            str(MAX_FILE_BYTES), str(MAX_FETCH_BYTES))

    def process(self, output: list[str]) -> dict[str, bytes | None]:
        answer = _json(output)
        if not isinstance(answer, dict) or "error" in answer:
            return {}
        return {path: None if data is None else base64.b64decode(data) for path, data in answer.items()}
