"""`ship`: a new release from its uploaded tarball to live in one command (issue 30).

The deploy uploads the release's tarball (through the SSH user's private upload
directory when it connects with sudo) and runs this once, with the tarball's sha256:

    copy the upload into a file of root's while hashing it; a wrong hash: refused,
        nothing unpacked
    unpack it into releases/<id> (root's, group the app user's)
    its venv (built in the sandbox if it is not yet), the import check, the
        before-switch commands, the canary: each the very step (and message) of
        build-venv, check, run and canary, sandboxed as they are (with no
        before-switch command, the check and the canary share one sandboxed start
        of uWSGI and one import of the app, each still judged with its own message)
    with --activate MODE: the switch, uWSGI's reload and the health gate (activate)
    with --prune: keep the newest releases (prune)

A step that fails stops the rest, with its own message; before the switch the live
release is left alone. The upload is removed whatever happens, and so are the app's
uploads of runs cut off between their upload and their `ship` (release-<app>-*.tar: the
deploy lock is held, so no other run of this app is under way).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from argparse import Namespace
from pathlib import Path

from . import activation, base, releases, steps

UPLOAD_PREFIX = "release-"  # the deploy's uploads: release-<app>-<random>.tar in the upload directory
HEX64 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


def receive(upload: Path, expected: str, release: str) -> Path:
    """The upload copied into releases/.upload-<release>.tar (root's, 600) while its
    sha256 is computed; the upload itself removed. Refused (and nothing kept) unless
    the bytes copied are the ones whose hash the deploy sent."""
    if not HEX64.match(expected):
        raise base.Failure(f"release {release}: {expected!r} is not a sha256; nothing was unpacked")
    copy = base.RELEASES / f".upload-{release}.tar"
    try:
        source = os.open(upload, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise base.Failure(f"release {release}: the upload {upload} cannot be read ({exc.strerror}); "
                           "nothing was unpacked") from None
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise base.Failure(f"release {release}: the upload {upload} is not a regular file; nothing was unpacked")
        copy.unlink(missing_ok=True)
        target = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        digest = hashlib.sha256()
        try:
            for chunk in iter(lambda: os.read(source, CHUNK), b""):
                digest.update(chunk)
                os.write(target, chunk)
        finally:
            os.close(target)
    finally:
        os.close(source)
        upload.unlink(missing_ok=True)
    if digest.hexdigest() != expected:
        copy.unlink(missing_ok=True)
        raise base.Failure(f"release {release}: the uploaded tarball's sha256 is {digest.hexdigest()}, not "
                           f"{expected} as the deploy sent: refused, nothing was unpacked; the live release "
                           "was left alone")
    return copy


def remove_stale(upload: Path) -> None:
    """This app's uploads of runs cut off before their `ship`, beside `upload` (regular
    files only; never followed)."""
    directory, prefix = upload.parent, f"{UPLOAD_PREFIX}{base.CONFIG['app']}-"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tar")) or name == upload.name:
            continue
        try:
            info = os.lstat(directory / name)
            if stat.S_ISREG(info.st_mode):
                os.unlink(directory / name)
                base.log(f"removed the leftover upload {name} of an interrupted deploy")
        except OSError:
            continue


def unpack(tarball: Path, release: str) -> None:
    """releases/<release> from the tarball: root's files, the app user's group, no
    owner taken from the archive."""
    if release.startswith(".") or "/" in release or release in ("", ".."):
        raise base.Failure(f"{release!r} is not a release name")
    if release == releases.live():
        raise base.Failure(f"release {release} is live: refusing to unpack over it")
    path = base.RELEASES / release
    user = base.CONFIG["user"]
    script = ('rm -rf -- "$1" && mkdir -- "$1" && tar -xf "$2" -C "$1" --no-same-owner && '
              'chown -R -h "root:$3" -- "$1" && chmod 750 -- "$1"')
    try:
        if subprocess.run(["/bin/sh", "-c", script, "unpack", str(path), str(tarball), user]).returncode != 0:
            raise base.Failure(f"release {release}: unpacking its tarball failed (output above); "
                               "the live release was left alone")
    finally:
        tarball.unlink(missing_ok=True)
    base.log(f"release {release} unpacked")


STAGE = ""  # the step at work, for the audit log when one fails before the switch


def cmd_ship(args) -> None:
    global STAGE
    release = args.release
    step = Namespace(release=release, run=args.run, host_name=args.host_name)
    upload = Path(args.upload)
    STAGE = "upload"
    remove_stale(upload)
    unpack(receive(upload, args.sha256, release), release)
    STAGE = "build-venv"
    steps.cmd_build_venv(step)
    STAGE = "check"
    if args.canary and not args.before:
        # Nothing runs between the two: one start of uWSGI and the app for both.
        checked, answered = steps.check_and_canary(release)
        steps.cmd_check(step, checked)
        STAGE = "canary"
        steps.cmd_canary(step, answered)
    else:
        steps.cmd_check(step)
        for command in args.before:
            STAGE = "run"
            steps.cmd_run(Namespace(release=release, run=args.run, cmd=[command]))
        if args.canary:
            STAGE = "canary"
            steps.cmd_canary(step)
    if args.activate:
        STAGE = "activate"  # audits itself
        activation.activate(release, args.activate, args.host_name, kind="deploy", run=args.run)
    if args.prune:
        STAGE = "prune"
        activation.cmd_prune(step)
