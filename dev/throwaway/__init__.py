"""Throwaway Debian hosts in Docker containers, booted with systemd and reached over SSH.

No registry is needed: the base image is built locally with debootstrap and
`docker import` (image.py). Hosts are booted from it here; pyinfra is run at them as
a user would (runs.py).

Every container and network made here carries the label ``LABEL``, and code here
only ever removes objects it created.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dev.throwaway.base import CA_BUNDLE, CACHE_DIR, LABEL, PYINFRA, REPO_ROOT, ThrowawayError, docker_client
from dev.throwaway.image import BASE_PACKAGES, DEPLOY_USER, RELEASES, apt_archives, ensure_image, recipe_hash
from dev.throwaway.runs import DeployRun, run_command, run_pyinfra, write_group_inventory

__all__ = ["CA_BUNDLE", "CACHE_DIR", "LABEL", "PYINFRA", "REPO_ROOT", "ThrowawayError", "docker_client",
           "BASE_PACKAGES", "DEPLOY_USER", "RELEASES", "apt_archives", "ensure_image", "recipe_hash",
           "DeployRun", "run_command", "run_pyinfra", "write_group_inventory",
           "EXEC_READS", "SYSTEMD_RUN_KWARGS", "Host", "ssh_key", "start_host"]

# The flags systemd needs to run as PID 1 in a container on these machines.
SYSTEMD_RUN_KWARGS = dict(
    cap_add=["SYS_ADMIN"],
    security_opt=["seccomp=unconfined"],
    cgroupns="host",
    tmpfs={"/run": "", "/run/lock": ""},
    # systemd shuts down cleanly on SIGRTMIN+3, so `docker stop` is a real shutdown.
    stop_signal="SIGRTMIN+3",
)


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
    name: str  # its hostname and its name in inventories (the container's, unless started with `hostname`)
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
        the command writes into a root-only file on the host, and its status and size
        follow the file's contents behind a marker line: when the marker is missing, or
        fewer bytes than the file holds came before it (the stream's start lost: a test
        read '' for `systemctl is-active` with its status 0), the file is read again
        (the command is not re-run)."""
        token = uuid.uuid4().hex
        out = f"/tmp/.throwaway-exec.{token}"
        marker = f"throwaway-exec-{token}"
        # Files whose contents an earlier call has read go now, in the same exec.
        tidy = f"rm -f {' '.join(self.exec_files_read)}; " if self.exec_files_read else ""
        trailer = f"printf '\\n%s %s %s\\n' {marker} \"$(cat {out}.code)\" \"$(wc -c < {out})\""
        script = (f'{tidy}(umask 077; : > {out}); sh -c "$1" > {out} 2>&1; echo $? > {out}.code; '
                  f"cat {out}; {trailer}")
        reread = f"cat {out}; {trailer}"
        argv = ["sh", "-c", script, "sh", command]
        for _ in range(EXEC_READS):
            _, output = self.container.exec_run(argv, demux=False)
            raw = output or b""
            head, found, tail = raw.rpartition(f"\n{marker} ".encode())
            fields = tail.split()
            if found and len(fields) >= 2 and fields[1].isdigit() and int(fields[1]) == len(head):
                break
            argv = ["sh", "-c", reread]
        else:
            raise ThrowawayError(f"`{command}` on {self.name}: its output could not be read back "
                                 f"in {EXEC_READS} tries (last read: {raw.decode(errors='replace')!r})")
        self.exec_files_read = (out, f"{out}.code")
        code = int(fields[0])
        text = head.decode(errors="replace")
        if check and code != 0:
            raise ThrowawayError(f"`{command}` failed on {self.name} ({code}):\n{text}")
        return text

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


def start_host(image: str, name: str | None = None, network: str | None = None,
               ports: tuple[int, ...] = (22, 80), labels: dict | None = None,
               cap_add: tuple[str, ...] = (), hostname: str | None = None,
               apt_archives_tag: str | None = None) -> Host:
    """Boot a container from `image` with systemd as PID 1 and our SSH key authorised.
    `cap_add` grants more capabilities, e.g. NET_ADMIN for a host whose firewall
    (nftables) the deploy manages. `hostname` (default: the container's name) is the
    name the host has for itself and in inventories: a copy of a deployed host started
    under that host's name is the same host to a deploy. `apt_archives_tag`: the
    host's own downloaded packages directory (apt_archives), instead of the process's."""
    client = docker_client()
    key_path, public_key = ssh_key()
    name = name or f"throwaway-{uuid.uuid4().hex[:8]}"
    hostname = hostname or name
    release = "trixie" if "trixie" in image else "bookworm"
    apt_cache = apt_archives(release, apt_archives_tag)
    container = client.containers.run(
        image,
        detach=True,
        name=name,
        hostname=hostname,
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
    host = Host(container=container, name=hostname, ssh_port=0, http_port=0, key_path=key_path)
    try:
        host._refresh_ports()
        # Booted first: Host.exec keeps a command's output in /tmp, which systemd empties
        # while it boots (an exec before that once lost its output file, and the run).
        host.wait_until_ready()
        key = json.dumps(public_key)
        host.exec(
            f"umask 077 && mkdir -p /root/.ssh && echo {key} > /root/.ssh/authorized_keys && "
            f"mkdir -p /home/{DEPLOY_USER}/.ssh && echo {key} > /home/{DEPLOY_USER}/.ssh/authorized_keys && "
            f"chown -R {DEPLOY_USER}: /home/{DEPLOY_USER}/.ssh"
        )
    except Exception:
        host.remove()
        raise
    return host


