"""Fixtures: throwaway systemd hosts in Docker, and running the real pyinfra CLI at them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import throwaway

REPO_ROOT = throwaway.REPO_ROOT
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
SESSION = uuid.uuid4().hex[:8]
SESSION_LABEL = "io.pyinfra-flask.test-session"


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


def run_deploy(host: throwaway.Host, tmp_path: Path, *flags: str, data: dict | None = None,
               inventory_data: dict | None = None, check: bool = True, deploy: str = "deploy.py",
               timeout: int = 900) -> DeployRun:
    """Run `pyinfra <inventory> deploy.py -y` exactly as a user would, over SSH."""
    inventory = host.write_inventory(tmp_path / f"inventory_{uuid.uuid4().hex[:6]}.py", inventory_data)
    command = [PYINFRA, str(inventory), deploy, *flags]
    if "--dry" not in flags:
        command.append("-y")
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={_encode(value)}"]
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout, env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    run = DeployRun(proc.returncode, proc.stdout, time.monotonic() - started)
    if check and run.returncode != 0:
        pytest.fail(f"deploy failed ({run.returncode}):\n{run.output[-6000:]}")
    return run


def get(url: str, retries: int = 1, **kwargs) -> requests.Response:
    for attempt in range(retries):
        try:
            return requests.get(url, timeout=10, **kwargs)
        except requests.ConnectionError:
            if attempt == retries - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


class HostFactory:
    """Starts throwaway hosts for this test session and always removes them."""

    def __init__(self):
        self.hosts: list[throwaway.Host] = []
        self.images: list[str] = []

    def start(self, image: str, **kwargs) -> throwaway.Host:
        labels = {SESSION_LABEL: SESSION, **kwargs.pop("labels", {})}
        host = throwaway.start_host(image, name=f"t-{SESSION}-{len(self.hosts)}", labels=labels, **kwargs)
        self.hosts.append(host)
        return host

    def snapshot(self, host: throwaway.Host) -> str:
        """An image of `host`'s disk, to boot copies of it from."""
        image = host.snapshot(f"{SESSION}-{len(self.images)}")
        self.images.append(image)
        return image

    def remove(self, host: throwaway.Host) -> None:
        host.remove()
        if host in self.hosts:
            self.hosts.remove(host)

    def cleanup(self) -> None:
        for host in self.hosts:
            host.remove()
        client = throwaway.docker_client()
        # Anything else this session labelled (e.g. a host whose start failed half-way).
        for container in client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={SESSION}"}):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": f"{SESSION_LABEL}={SESSION}"}):
            network.remove()
        for image in self.images:
            try:
                client.images.remove(image, force=True)
            except Exception:  # already gone
                pass


@pytest.fixture(scope="session")
def hosts():
    factory = HostFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="session")
def bookworm_image() -> str:
    return throwaway.ensure_image("bookworm")


@dataclass
class Deployed:
    host: throwaway.Host
    first_run: DeployRun


@pytest.fixture(scope="session")
def deployed(hosts, bookworm_image, tmp_path_factory) -> Deployed:
    """One bare Debian 12 host, deployed once with the defaults; shared by the
    read-only tests."""
    host = hosts.start(bookworm_image)
    run = run_deploy(host, tmp_path_factory.mktemp("deployed"))
    print(f"\ncold deploy of {host.name}: {run.seconds:.1f}s")
    return Deployed(host, run)


@pytest.fixture(scope="session")
def deployed_image(hosts, deployed) -> str:
    return hosts.snapshot(deployed.host)


@pytest.fixture
def fork(hosts, deployed_image):
    """A private copy of the deployed host, for tests that change or break it."""
    host = hosts.start(deployed_image)
    yield host
    hosts.remove(host)


@pytest.fixture
def bare_host(hosts, bookworm_image):
    """A bare Debian 12 host nothing was deployed to."""
    host = hosts.start(bookworm_image)
    yield host
    hosts.remove(host)
