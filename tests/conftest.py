"""Fixtures: throwaway systemd hosts in Docker, and running the real pyinfra CLI at them."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import itertools
import json
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

# `./run test` runs the suite in three processes (pytest-xdist, one test file at a
# time each): each keeps its hosts' Debian packages in a directory of its own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["THROWAWAY_APT_ARCHIVES_TAG"] = os.environ["PYTEST_XDIST_WORKER"]

# What the test processes of one run share: made by the first process that imports
# this file (pytest-xdist's controller, before it starts the others, which inherit
# the variable; or the one process of `-n 0`), and removed by it at its exit.
_RUN_DIR_VARIABLE = "PYINFRA_FLASK_TEST_RUN_DIR"
if not os.environ.get(_RUN_DIR_VARIABLE):
    os.environ[_RUN_DIR_VARIABLE] = tempfile.mkdtemp(prefix="pyinfra-flask-test-run-")
    _RUN_OWNER = True
else:
    _RUN_OWNER = False
RUN_DIR = Path(os.environ[_RUN_DIR_VARIABLE])

# The laptop's uWSGI wheel cache (tasks/steps/uwsgi_wheel.py): one per run, empty at
# the start, so the run's first deploy of a kind (the shared cold deploy below for
# Debian 12) compiles uWSGI and keeps the wheel, and every later cold deploy of that
# kind, in any test process, installs it.
WHEEL_CACHE = RUN_DIR / "cache"
WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
os.environ["PYINFRA_FLASK_CACHE"] = str(WHEEL_CACHE)

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
    """Starts throwaway hosts for this test session and always removes them.

    A host a test is done with is removed in the background (0.4-2.5 s of a fork
    test's teardown in tests/hosts/test_releases.py under load; a run removes about
    70 hosts) while the next test starts; `cleanup` waits for every removal before
    its own sweep, so nothing outlives the session. Names come from a counter, never
    reused while an earlier host of the name may still be going."""

    def __init__(self):
        self.hosts: list[throwaway.Host] = []
        self.images: list[str] = []
        self._numbers = itertools.count()
        self._removals = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="remove-host")
        self._removing: list[concurrent.futures.Future] = []
        self._booting = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spare-host")
        self._spares: dict[str, concurrent.futures.Future] = {}

    def start(self, image: str, **kwargs) -> throwaway.Host:
        labels = {SESSION_LABEL: SESSION, **kwargs.pop("labels", {})}
        host = throwaway.start_host(image, name=f"t-{SESSION}-{next(self._numbers)}", labels=labels, **kwargs)
        self.hosts.append(host)
        return host

    def from_spare(self, image: str) -> throwaway.Host:
        """A plain host of `image` (no network, ports or capabilities of its own), as
        `fork`, `bare_host` and the files' own copies of the deployed host take: the one
        booted in the background after the previous call for `image`, else one booted
        now; either way the next one starts booting in the background (and is removed
        with the session's hosts if no test takes it). Fork tests otherwise waited
        1.4-5.1 s for each boot (tests/hosts/test_releases.py, `--durations`, under load)."""
        spare = self._spares.pop(image, None)
        host = None
        if spare is not None:
            try:
                host = spare.result()
            except Exception:  # its start failed: a host started now (cleanup sweeps what it left)
                host = None
        if host is None:
            host = self.start(image)
        self._spares[image] = self._booting.submit(self.start, image)
        return host

    def start_many(self, *specs: tuple[str, dict]) -> list[throwaway.Host]:
        """Hosts booted side by side, one per `(image, start's keyword arguments)`, in
        that order: a boot is mostly waiting on systemd (2.5-4.7 s each here)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(specs)) as pool:
            futures = [pool.submit(self.start, image, **kwargs) for image, kwargs in specs]
        return [future.result() for future in futures]

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
        """Removes `host` in the background (see the class)."""
        if host in self.hosts:
            self.hosts.remove(host)
        self._removing.append(self._removals.submit(host.remove))

    def cleanup(self) -> None:
        # The spares still booting have finished (or failed) before anything is removed.
        self._booting.shutdown(wait=True)
        for host in self.hosts:
            self._removing.append(self._removals.submit(host.remove))
        self.hosts = []
        # Every removal finished (or failed: the sweep below catches what is left).
        concurrent.futures.wait(self._removing)
        self._removals.shutdown(wait=True)
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


@dataclass
class SharedDeploy:
    """The run's one cold deploy of a bare Debian 12 host with the defaults: its image
    (`docker commit` right after the deploy), its run and the host's name; `host` is
    the deployed host itself in the test process that deployed it, None in the others."""
    image: str
    first_run: DeployRun
    name: str
    host: throwaway.Host | None


_SHARED_DEPLOY = RUN_DIR / "deployed.json"


@contextlib.contextmanager
def _run_lock(name: str):
    """A lock held by one test process of the run at a time."""
    with open(RUN_DIR / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_shared_image() -> None:
    """At the run's end (its first process's exit): the shared deployed image."""
    try:
        image = json.loads(_SHARED_DEPLOY.read_text())["image"]
        throwaway.docker_client().images.remove(image, force=True)
    except Exception:  # no cold deploy in this run, or already gone
        pass


if _RUN_OWNER:
    # Registered first, so it runs last: after the image, the directory.
    atexit.register(shutil.rmtree, RUN_DIR, True)
    atexit.register(_remove_shared_image)


@pytest.fixture(scope="session")
def shared_deploy(hosts, bookworm_image, tmp_path_factory) -> SharedDeploy:
    """One cold deploy per run, not one per test process: the first process to need it
    deploys (the others wait for it) and commits the host as an image that every
    process forks from. Cold deploys at the same moment in three processes took
    76-108 s each on two cores; one alone takes about half of that."""
    with _run_lock("deployed"):
        if _SHARED_DEPLOY.exists():
            record = json.loads(_SHARED_DEPLOY.read_text())
            return SharedDeploy(record["image"], DeployRun(**record["first_run"]), record["name"], None)
        host = hosts.start(bookworm_image)
        run = run_deploy(host, tmp_path_factory.mktemp("deployed"))
        print(f"\ncold deploy of {host.name}: {run.seconds:.1f}s")
        # Removed at the run's end, not with this process's hosts: the others fork it.
        image = host.snapshot(f"{SESSION}-deployed")
        staging = _SHARED_DEPLOY.with_suffix(".staging")
        staging.write_text(json.dumps({"image": image, "first_run": dataclasses.asdict(run), "name": host.name}))
        staging.rename(_SHARED_DEPLOY)
        return SharedDeploy(image, run, host.name, host)


@pytest.fixture(scope="session")
def deployed(hosts, shared_deploy) -> Deployed:
    """The deployed Debian 12 host, shared by the read-only tests of this test process:
    the host the run's cold deploy went to, or (in the other processes) its copy booted
    from its image under its name (the name the deploy wrote into its files, so a
    second run there changes nothing, as on the original)."""
    host = shared_deploy.host or hosts.start(shared_deploy.image, hostname=shared_deploy.name)
    return Deployed(host, shared_deploy.first_run)


@pytest.fixture(scope="session")
def deployed_image(shared_deploy) -> str:
    return shared_deploy.image


@pytest.fixture
def fork(hosts, deployed_image):
    """A private copy of the deployed host, for tests that change or break it."""
    host = hosts.from_spare(deployed_image)
    yield host
    hosts.remove(host)


@pytest.fixture
def bare_host(hosts, bookworm_image):
    """A bare Debian 12 host nothing was deployed to."""
    host = hosts.from_spare(bookworm_image)
    yield host
    hosts.remove(host)


class Load:
    """Continuous HTTP GETs from a few threads, bounded in time, stopping by itself.

    Use as a context manager around whatever must not drop requests; afterwards
    `.ok`, `.failures` (non-2xx answers and connection errors) and `.bodies`.
    `request_kwargs` go to every request (e.g. `verify`, `headers`); `interval`
    spaces each thread's requests, for a steady load that leaves the machine's CPU
    to what is under test.

    Each thread keeps its connection alive, as browsers do, and, as they do (RFC 9112
    9.3.1), sends a GET again once on a new connection when the server closed the reused
    idle one before any answer: nginx closes its idle keep-alive connections when it
    reloads, and a request already on its way meets the close. Those are counted in
    `.retried` and reported; anything else, and a second failure, is a failure."""

    def __init__(self, url: str, threads: int = 4, max_seconds: float = 240, interval: float = 0,
                 **request_kwargs):
        self.url, self.threads, self.max_seconds, self.interval = url, threads, max_seconds, interval
        self.request_kwargs = request_kwargs
        self.ok = self.retried = 0
        self.failures: list[str] = []
        self.bodies: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _get(self, session, reused: bool):
        try:
            return session.get(self.url, timeout=15, **self.request_kwargs)
        except requests.ConnectionError as exc:
            if not reused or "Connection aborted" not in str(exc):
                raise
            with self._lock:
                self.retried += 1
            return session.get(self.url, timeout=15, **self.request_kwargs)

    def _run(self):
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        reused = False
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = self._get(session, reused)
                outcome = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
                body = response.text.strip()[:60]
            except requests.RequestException as exc:
                outcome, body = f"{type(exc).__name__}: {str(exc)[:120]}", None
            reused = outcome is None
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
        retried = f" ({self.retried} sent again on a new connection: the server closed its idle one)" \
            if self.retried else ""
        return f"{label}: {self.sent} requests, {len(self.failures)} failed{retried}, bodies {self.bodies}"


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


# The order test files are handed to the test processes (pytest.ini: `--dist loadfile
# --no-loadscope-reorder`, whole files, in this order, to whichever process is free):
# the longest first, so that no long file starts last while the other processes have
# run out of work; the longest host-less ones early too, beside the run's cold deploy
# (which the other processes wait for as soon as they reach a host file). From a
# run's `--durations` and each file's span in its process, longest first. Files not
# named here come after: real-host ones (tests/hosts/) before the host-less ones.
SLOWEST_FIRST = [
    "tests/hosts/test_backups.py",
    "tests/hosts/test_releases.py",
    "tests/hosts/test_file_backups.py",
    "tests/hosts/test_backups_s3.py",
    "tests/roles/test_distros.py",
    "tests/steps/test_background.py",
    "tests/hosts/test_reliability.py",
    "tests/hosts/test_features.py",
    "tests/hosts/test_fleet_redis.py",
    "tests/hosts/test_deploy.py",
    "tests/hosts/test_rollout.py",
    "tests/hosts/test_acme.py",
    "tests/hosts/test_database.py",
    "tests/hosts/test_workers.py",
    "tests/hosts/test_socketio.py",
    "tests/hosts/test_database_servers.py",
    "tests/hosts/test_monitoring.py",
    "tests/hosts/test_watch.py",
    "tests/hosts/test_maintenance.py",
    "tests/hosts/test_network.py",
    "tests/hosts/test_canary.py",
    "tests/hosts/test_static_assets.py",
    "tests/hosts/test_trust.py",
    "tests/hosts/test_hardening.py",
    "tests/run/test_prefetch.py",
    "tests/hosts/test_exclusive_migration.py",
    "tests/hosts/test_ops.py",
    "tests/hosts/test_bundle.py",
    "tests/roles/test_monitoring_server.py",
    "tests/steps/test_database.py",
    "tests/ops/test_ops.py",
]


def pytest_collection_modifyitems(session, config, items):
    """Whole files in SLOWEST_FIRST's order; within a file, pytest's own order."""
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}

    def place(item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in rank:
            return (0, rank[path])
        return (1, 0) if path.startswith("tests/hosts/") else (2, 0)

    items.sort(key=place)  # stable: files not named keep pytest's order
