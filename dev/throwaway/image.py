"""The base image of the throwaway hosts: Debian from debootstrap, `docker import`ed
under a tag carrying a hash of its recipe (rebuilt only when the recipe, or the build
machine's CA bundle, changes), and the Debian packages its hosts download, kept."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker.errors

from dev.throwaway.base import CA_BUNDLE, CACHE_DIR, LABEL, ThrowawayError, docker_client

# What a bare cloud VPS has: systemd, sshd, CA certificates. Nothing the deploy installs.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "ca-certificates", "procps", "iproute2",
                 "sudo"]
# The account the tests connect as, the way the README's inventories do: a normal
# user with passwordless sudo (root's login is there only for tests that need it).
DEPLOY_USER = "deploy"
RELEASES = ("bookworm", "trixie")


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt uses, so containers use it too."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for match in re.finditer(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s*)?)(\S+/debian)/?\s", text):
            return match.group(1)
    raise ThrowawayError("No Debian mirror found in this machine's apt sources; set DEBIAN_MIRROR.")


def _customize_rootfs(root: Path) -> None:
    """Turn a debootstrap tree into a bootable test host."""
    # pip on the host must trust what this machine trusts (HTTPS to the package index).
    shutil.copy(CA_BUNDLE, root / "etc/ssl/build-host-ca.crt")
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/build-host-ca.crt\n")
    (root / "etc/apt/apt.conf.d/90throwaway").write_text(
        'Acquire::Retries "3";\nBinary::apt::APT::Keep-Downloaded-Packages "true";\n'
    )
    # Background apt runs would race the deploy for the dpkg lock; units that
    # make no sense in a container are masked too.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "getty@tty1.service",
                 "systemd-remount-fs.service", "console-getty.service"):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", DEPLOY_USER],
                   check=True)
    sudoers = root / "etc/sudoers.d" / DEPLOY_USER
    sudoers.write_text(f"{DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)


def recipe_hash(release: str) -> str:
    parts = [release, " ".join(BASE_PACKAGES), inspect.getsource(_customize_rootfs),
             inspect.getsource(ensure_image),
             hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def ensure_image(release: str = "bookworm", log=print) -> str:
    """The tag of the base image for a Debian release, built if missing."""
    if release not in RELEASES:
        raise ThrowawayError(f"Unknown release {release!r}; known: {', '.join(RELEASES)}")
    tag = f"pyinfra-flask-host:{release}-{recipe_hash(release)}"
    client = docker_client()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise ThrowawayError("debootstrap is missing: `apt-get install -y debootstrap`.")
    log(f"Building base image {tag} with debootstrap (about a minute, cached afterwards)...")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="throwaway-rootfs-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
             release, str(root), debian_mirror()],
            check=True, stdout=subprocess.DEVNULL,
        )
        _customize_rootfs(root)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]',
             "-c", f"LABEL {LABEL}.recipe={recipe_hash(release)}", "-", tag],
            stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise ThrowawayError("tar of the rootfs failed")
    log(f"Built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def apt_archives(release: str, tag: str | None = None) -> Path:
    """Where a release's hosts keep downloaded Debian packages (bind-mounted as their
    /var/cache/apt/archives), shared by every host of the release. With
    THROWAWAY_APT_ARCHIVES_TAG set (one per parallel test process), a directory of
    its own, seeded with hard links to the shared one's packages: apt locks its
    archives directory, and two cold deploys sharing one would wait on each other.
    `tag`, when given, is used instead of the variable (hosts of one process that
    install packages at the same moment, each with a directory of its own)."""
    shared = CACHE_DIR / f"apt-archives-{release}"
    tag = os.environ.get("THROWAWAY_APT_ARCHIVES_TAG", "") if tag is None else tag
    path = shared.with_name(f"{shared.name}-{tag}") if tag else shared
    if tag and not path.exists() and shared.is_dir():
        # Hosts of one process may boot side by side: a staging directory per thread,
        # and the first one renamed into place wins.
        staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for package in shared.glob("*.deb"):
            with contextlib.suppress(FileNotFoundError):  # gone from the shared one meanwhile
                os.link(package, staging / package.name)
        try:
            staging.rename(path)
        except OSError:  # seeded meanwhile by another thread or process
            shutil.rmtree(staging, ignore_errors=True)
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path
