"""Throwaway Debian hosts in Docker containers, booted with systemd and reached over SSH.

No registry is needed: the base image is built locally with debootstrap and
`docker import`, cached under a tag that carries a hash of its recipe, and rebuilt
only when the recipe (or the build machine's CA bundle) changes.

Every container and network made here carries the label ``LABEL``, and code here
only ever removes objects it created.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

LABEL = "io.pyinfra-flask.throwaway"
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("THROWAWAY_CACHE", Path.home() / ".cache" / "pyinfra-flask-throwaway"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYINFRA = str(Path(sys.executable).parent / "pyinfra")

# What a bare cloud VPS has: systemd, sshd, CA certificates. Nothing the deploy installs.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "ca-certificates", "procps", "iproute2",
                 "sudo"]
# The account the tests connect as, the way the README's inventories do: a normal
# user with passwordless sudo (root's login is there only for tests that need it).
DEPLOY_USER = "deploy"
RELEASES = ("bookworm", "trixie")

# The flags systemd needs to run as PID 1 in a container on these machines.
SYSTEMD_RUN_KWARGS = dict(
    cap_add=["SYS_ADMIN"],
    security_opt=["seccomp=unconfined"],
    cgroupns="host",
    tmpfs={"/run": "", "/run/lock": ""},
    # systemd shuts down cleanly on SIGRTMIN+3, so `docker stop` is a real shutdown.
    stop_signal="SIGRTMIN+3",
)


class ThrowawayError(RuntimeError):
    pass


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise ThrowawayError(
            f"No Docker engine answers ({exc}). Start one: `./run test` (it starts one)."
        ) from exc


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


def ssh_key() -> tuple[Path, str]:
    """A throwaway SSH key for the test hosts (private key path, public key line),
    kept in the cache directory, never in the repository."""
    key_path = CACHE_DIR / "id_ed25519"
    if not key_path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        # Written aside, then linked into place: a parallel test process making its
        # own at the same moment never reads half a key; the first one's wins.
        staging = key_path.with_name(f".{key_path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private)
        try:
            os.link(staging, key_path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return key_path, public.decode() + " throwaway-test-key"


EXEC_READS = 5  # tries at reading a command's output back (Host.exec)


@dataclass
class Host:
    """One running throwaway host."""

    container: docker.models.containers.Container
    name: str
    ssh_port: int
    http_port: int
    key_path: Path
    extra_ports: dict[int, int] = field(default_factory=dict)
    exec_files_read: tuple[str, ...] = ()  # output files of `exec` already read back

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def exec(self, command: str, check: bool = True) -> str:
        """Run a shell command as root on the host (through `docker exec`); its output
        (stdout and stderr together).

        Docker can lose the tail of an exec's output stream (docker-py #2042, moby
        #27289), which made a test read '' for a command that printed its answer. So
        the command writes into a root-only file on the host, and its status follows
        the file's contents behind a marker line: when the marker is missing, the file
        is read again (the command is not re-run)."""
        token = uuid.uuid4().hex
        out = f"/tmp/.throwaway-exec.{token}"
        marker = f"throwaway-exec-{token}"
        # Files whose contents an earlier call has read go now, in the same exec.
        tidy = f"rm -f {' '.join(self.exec_files_read)}; " if self.exec_files_read else ""
        script = (f'{tidy}(umask 077; : > {out}); sh -c "$1" > {out} 2>&1; echo $? > {out}.code; '
                  f"cat {out}; printf '\\n%s %s\\n' {marker} \"$(cat {out}.code)\"")
        reread = f"cat {out}; printf '\\n%s %s\\n' {marker} \"$(cat {out}.code)\""
        argv = ["sh", "-c", script, "sh", command]
        for _ in range(EXEC_READS):
            _, output = self.container.exec_run(argv, demux=False)
            text = output.decode(errors="replace") if output else ""
            head, found, tail = text.rpartition(f"\n{marker} ")
            if found:
                break
            argv = ["sh", "-c", reread]
        else:
            raise ThrowawayError(f"`{command}` on {self.name}: its output could not be read back "
                                 f"in {EXEC_READS} tries (last read: {text!r})")
        self.exec_files_read = (out, f"{out}.code")
        code = int(tail.split()[0])
        if check and code != 0:
            raise ThrowawayError(f"`{command}` failed on {self.name} ({code}):\n{head}")
        return head

    def inventory_data(self, as_root: bool = False) -> dict:
        """How pyinfra reaches the host: as the sudo user, as users connect to their
        servers, or as root for the tests that need it."""
        return {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": self.ssh_port,
            **({"ssh_user": "root"} if as_root else {"ssh_user": DEPLOY_USER, "_sudo": True}),
            "ssh_key": str(self.key_path),
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
        }

    def write_inventory(self, path: Path, data: dict | None = None) -> Path:
        """A pyinfra inventory file targeting this host over SSH."""
        host_data = {**self.inventory_data(), **(data or {})}
        path.write_text(f"hosts = [({self.name!r}, {host_data!r})]\n")
        return path

    def address(self, network: str) -> str:
        """The host's address on a Docker network (its "private" address)."""
        self.container.reload()
        return self.container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]

    def wait_until_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            code, output = self.container.exec_run(["systemctl", "is-system-running"])
            state = output.decode().strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise ThrowawayError(f"{self.name}: systemd did not finish booting ({state!r})")
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=2) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise ThrowawayError(f"{self.name}: sshd did not answer on 127.0.0.1:{self.ssh_port}")

    def restart(self) -> None:
        self.container.restart(timeout=30)
        self._refresh_ports()
        self.wait_until_ready()

    def _refresh_ports(self) -> None:
        self.container.reload()
        ports = self.container.attrs["NetworkSettings"]["Ports"]
        published = {int(key.split("/")[0]): int(value[0]["HostPort"]) for key, value in ports.items() if value}
        self.ssh_port, self.http_port = published[22], published[80]
        self.extra_ports = published

    def snapshot(self, tag_suffix: str) -> str:
        """Commit this host's filesystem as an image, to fork hosts in that state."""
        repository = "pyinfra-flask-snapshot"
        tag = f"{tag_suffix}-{uuid.uuid4().hex[:8]}"
        self.container.commit(repository=repository, tag=tag, conf={"Labels": {LABEL: "snapshot"}})
        return f"{repository}:{tag}"

    def remove(self) -> None:
        try:
            self.container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass


def write_group_inventory(path: Path, groups: dict[str, list[tuple[Host, dict]]]) -> Path:
    """A pyinfra inventory with groups: {group: [(host, extra host data), ...]}."""
    lines = []
    for group, members in groups.items():
        entries = [(host.name, {**host.inventory_data(), **data}) for host, data in members]
        lines.append(f"{group} = {entries!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def apt_archives(release: str) -> Path:
    """Where a release's hosts keep downloaded Debian packages (bind-mounted as their
    /var/cache/apt/archives), shared by every host of the release. With
    THROWAWAY_APT_ARCHIVES_TAG set (one per parallel test process), a directory of
    its own, seeded with hard links to the shared one's packages: apt locks its
    archives directory, and two cold deploys sharing one would wait on each other."""
    shared = CACHE_DIR / f"apt-archives-{release}"
    tag = os.environ.get("THROWAWAY_APT_ARCHIVES_TAG", "")
    path = shared.with_name(f"{shared.name}-{tag}") if tag else shared
    if tag and not path.exists() and shared.is_dir():
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for package in shared.glob("*.deb"):
            os.link(package, staging / package.name)
        staging.rename(path)
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path


def start_host(image: str, name: str | None = None, network: str | None = None,
               ports: tuple[int, ...] = (22, 80), labels: dict | None = None,
               cap_add: tuple[str, ...] = ()) -> Host:
    """Boot a container from `image` with systemd as PID 1 and our SSH key authorised.
    `cap_add` grants more capabilities, e.g. NET_ADMIN for a host whose firewall
    (nftables) the deploy manages."""
    client = docker_client()
    key_path, public_key = ssh_key()
    name = name or f"throwaway-{uuid.uuid4().hex[:8]}"
    release = "trixie" if "trixie" in image else "bookworm"
    apt_cache = apt_archives(release)
    container = client.containers.run(
        image,
        detach=True,
        name=name,
        hostname=name,
        labels={LABEL: "host", **(labels or {})},
        network=network,
        ports={f"{port}/tcp": ("127.0.0.1", None) for port in ports},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            # Debian packages downloaded once, shared by the hosts of a release.
            str(apt_cache): {"bind": "/var/cache/apt/archives", "mode": "rw"},
        },
        **{**SYSTEMD_RUN_KWARGS, "cap_add": [*SYSTEMD_RUN_KWARGS["cap_add"], *cap_add]},
    )
    host = Host(container=container, name=name, ssh_port=0, http_port=0, key_path=key_path)
    try:
        host._refresh_ports()
        key = json.dumps(public_key)
        host.exec(
            f"umask 077 && mkdir -p /root/.ssh && echo {key} > /root/.ssh/authorized_keys && "
            f"mkdir -p /home/{DEPLOY_USER}/.ssh && echo {key} > /home/{DEPLOY_USER}/.ssh/authorized_keys && "
            f"chown -R {DEPLOY_USER}: /home/{DEPLOY_USER}/.ssh"
        )
        host.wait_until_ready()
    except Exception:
        host.remove()
        raise
    return host


@dataclass
class DeployRun:
    returncode: int
    output: str
    seconds: float

    def results(self) -> dict[str, tuple[str, str, str]]:
        """The `--> Results:` table: operation name -> (success, error, no change)."""
        rows = {}
        in_table = False
        for line in self.output.splitlines():
            if line.startswith("--> Results"):
                in_table = True
                continue
            if in_table:
                match = re.match(r"^\s{4}(.+?)\s{2,}(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
                if match:
                    rows[match.group(1)] = (match.group(3), match.group(4), match.group(5))
                elif line.startswith("-->"):
                    break
        return rows

    def changed_operations(self) -> list[str]:
        return [name for name, (success, _, _) in self.results().items()
                if success != "-" and name != "Grand total"]


def _encode(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_pyinfra(target: Host | Path, workdir: Path, *flags: str, data: dict | None = None,
                inventory_data: dict | None = None, deploy: str = "deploy.py",
                timeout: int = 900) -> DeployRun:
    """Run `pyinfra <inventory> <deploy> -y --data ...` as a user would, over SSH, at
    one host (an inventory is written for it) or at an inventory file."""
    if isinstance(target, Host):
        target = target.write_inventory(workdir / f"inventory_{uuid.uuid4().hex[:6]}.py", inventory_data)
    command = [PYINFRA, str(target), deploy, *flags]
    if "--dry" not in flags:
        command.append("-y")
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={_encode(value)}"]
    return run_command(command, timeout)


def run_command(command: list[str], timeout: int = 900) -> DeployRun:
    """Run a command from the repository root; its exit code, output and duration."""
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout, env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    return DeployRun(proc.returncode, proc.stdout, time.monotonic() - started)
