"""Fixtures: throwaway systemd hosts in Docker, and running the real pyinfra CLI at them."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from dev import throwaway
from dev.throwaway import DeployRun

# `./run test` runs the suite in two processes (pytest-xdist, one test file at a
# time each): each keeps its hosts' Debian packages in a directory of its own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["THROWAWAY_APT_ARCHIVES_TAG"] = os.environ["PYTEST_XDIST_WORKER"]

# The laptop's uWSGI wheel cache (tasks/steps/uwsgi_wheel.py): one per test process,
# empty at the start, so each process's first deploy compiles uWSGI and keeps the
# wheel, and later cold deploys of the same kind install it.
WHEEL_CACHE = Path(tempfile.mkdtemp(prefix="pyinfra-flask-test-cache-"))
os.environ["PYINFRA_FLASK_CACHE"] = str(WHEEL_CACHE)
atexit.register(shutil.rmtree, WHEEL_CACHE, True)

REPO_ROOT = throwaway.REPO_ROOT
SESSION = uuid.uuid4().hex[:8]
SESSION_LABEL = "io.pyinfra-flask.test-session"


def run_deploy(host: throwaway.Host | Path, tmp_path: Path, *flags: str, data: dict | None = None,
               inventory_data: dict | None = None, check: bool = True, deploy: str = "deploy.py",
               timeout: int = 900) -> DeployRun:
    """Run `pyinfra <inventory> deploy.py -y` exactly as a user would, over SSH."""
    run = throwaway.run_pyinfra(host, tmp_path, *flags, data=data, inventory_data=inventory_data,
                                deploy=deploy, timeout=timeout)
    if check and run.returncode != 0:
        # What went wrong comes before pyinfra's table of results, which can be long.
        before, _, _ = run.output.rpartition("--> Results")
        pytest.fail(f"{deploy} failed ({run.returncode}):\n{(before or run.output)[-6000:]}")
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

    def network(self) -> str:
        """A Docker network of this session's own, for hosts that talk to each other."""
        name = f"t-{SESSION}-net-{uuid.uuid4().hex[:4]}"
        throwaway.docker_client().networks.create(
            name, driver="bridge", labels={throwaway.LABEL: "network", SESSION_LABEL: SESSION}
        )
        return name

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


class Load:
    """Continuous HTTP GETs from a few threads, bounded in time, stopping by itself.

    Use as a context manager around whatever must not drop requests; afterwards
    `.ok`, `.failures` (non-2xx answers and connection errors) and `.bodies`.
    `request_kwargs` go to every request (e.g. `verify`, `headers`); `interval`
    spaces each thread's requests, for a steady load that leaves the machine's CPU
    to what is under test."""

    def __init__(self, url: str, threads: int = 4, max_seconds: float = 240, interval: float = 0,
                 **request_kwargs):
        self.url, self.threads, self.max_seconds, self.interval = url, threads, max_seconds, interval
        self.request_kwargs = request_kwargs
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _run(self):
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = session.get(self.url, timeout=15, **self.request_kwargs)
                outcome = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
                body = response.text.strip()[:60]
            except requests.RequestException as exc:
                outcome, body = type(exc).__name__, None
            with self._lock:
                if outcome:
                    self.failures.append(outcome)
                else:
                    self.ok += 1
                    self.bodies[body] = self.bodies.get(body, 0) + 1
            if self.interval:
                self._stop.wait(self.interval)

    def __enter__(self):
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    @property
    def sent(self) -> int:
        return self.ok + len(self.failures)

    def report(self, label: str) -> str:
        return f"{label}: {self.sent} requests, {len(self.failures)} failed, bodies {self.bodies}"


def app_variant(tmp_path: Path, greeting: str | None = None, append: str = "",
                requirements: str | None = None) -> Path:
    """A copy of the example app with a different greeting and/or extra code."""
    target = tmp_path / f"app-{uuid.uuid4().hex[:6]}"
    shutil.copytree(REPO_ROOT / "files/greeting", target)
    module = target / "greeting.py"
    text = module.read_text()
    if greeting is not None:
        text = re.sub(r'GREETING = ".*"', f"GREETING = {greeting!r}", text)
    module.write_text(text + append)
    if requirements is not None:
        (target / "requirements.txt").write_text(requirements)
    return target
