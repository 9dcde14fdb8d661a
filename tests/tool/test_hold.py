"""An exclusive migration's hold, host-less (files/release_tool/hold.py and the loader,
templates/loader.py.j2): the held worker waits, answers 503 with Retry-After past the
bound, runs the release `current` points to once the hold ends, and never holds the
deploy's own checks; the tool always ends the hold, whatever fails, and ends it only
after the switch when all went well. On a real host: tests/hosts/test_exclusive_migration.py."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from jinja2 import Template

from tasks import TEMPLATES
from tasks import tool as host_tool


# The loader -------------------------------------------------------------------------

@pytest.fixture
def app_root(tmp_path, monkeypatch):
    """Two releases of a tiny app, `current` at the first; the loader as the deploy writes it."""
    monkeypatch.chdir(tmp_path)  # the loader enters its release
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = f"holdapp_{uuid.uuid4().hex[:8]}"
    settings = SimpleNamespace(app_root=str(tmp_path), app_entry=f"{module}:app", entry_is_factory=False,
                               url_prefix="/")
    loader = Template((TEMPLATES / "loader.py.j2").read_text(), keep_trailing_newline=True, trim_blocks=True,
                      lstrip_blocks=True).render(s=settings)
    for release in ("r1", "r2"):
        path = tmp_path / "releases" / release
        path.mkdir(parents=True)
        (path / ".deploy-loader.py").write_text(loader)
        (path / f"{module}.py").write_text(
            "def app(environ, start_response):\n"
            "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
            f"    return [b'{release}']\n")
    os.symlink("releases/r1", tmp_path / "current")
    yield tmp_path
    sys.modules.pop(module, None)


def start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rpartition(")")[2].split()[19]


def hold(root, bound: float, retry_after: int = 7, pid: int | None = None) -> None:
    """The marker as the release tool writes it, naming this process (or `pid`) as its holder."""
    pid = pid or os.getpid()
    (root / "hold.json").write_text(json.dumps({"bound": bound, "retry_after": retry_after, "pid": pid,
                                                "start": start_time(os.getpid())}))


def worker(root, name: str = "uwsgi_file_srv_greeting_current_loader"):
    """The loader as uWSGI runs it in a new worker: through `current`."""
    return runpy.run_path(str(root / "current/.deploy-loader.py"), run_name=name)["application"]


def call(application, environ=None):
    answer = {}

    def start_response(status, headers):
        answer.update(status=status, headers=dict(headers))

    started = time.monotonic()
    body = b"".join(application(environ or {}, start_response))
    return answer["status"], answer["headers"], body, time.monotonic() - started


def test_without_a_hold_the_worker_runs_its_release(app_root):
    status, _, body, _ = call(worker(app_root))
    assert (status, body) == ("200 OK", b"r1")


def test_a_held_request_waits_and_is_served_by_the_release_switched_to(app_root):
    hold(app_root, bound=20)
    application = worker(app_root)
    assert type(application).__name__ == "_Held"
    answers = []
    thread = threading.Thread(target=lambda: answers.append(call(application)))
    thread.start()
    time.sleep(0.6)
    assert not answers  # still held
    os.replace(app_root / "current", app_root / "old")  # the switch...
    os.symlink("releases/r2", app_root / "current")
    (app_root / "hold.json").unlink()  # ...then the hold ends
    thread.join(5)
    status, _, body, seconds = answers[0]
    assert (status, body) == ("200 OK", b"r2") and 0.6 <= seconds < 3
    assert call(application)[2] == b"r2"  # and so is every later request


def test_past_the_bound_a_held_request_gets_503_with_retry_after(app_root):
    hold(app_root, bound=0.5, retry_after=7)
    application = worker(app_root)
    status, headers, body, seconds = call(application)
    assert status.startswith("503") and headers["Retry-After"] == "7" and 0.5 <= seconds < 1.5
    # The time queued before the worker took it counts (nginx's $msec).
    status, _, _, seconds = call(application, {"DEPLOY_QUEUED_AT": f"{time.time() - 0.4:.3f}"})
    assert status.startswith("503") and seconds < 0.3
    # A time from the future is taken for now.
    status, _, _, seconds = call(application, {"DEPLOY_QUEUED_AT": "9999999999.000"})
    assert status.startswith("503") and seconds >= 0.45
    # The migration failed: the hold ends, `current` never moved: the old release serves.
    (app_root / "hold.json").unlink()
    assert call(application)[:3:2] == ("200 OK", b"r1")


def test_a_hold_whose_tool_is_gone_holds_nothing(app_root):
    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()
    hold(app_root, bound=20, pid=gone.pid)  # killed, or a pid of before a restart
    status, _, body, seconds = call(worker(app_root))
    assert (status, body) == ("200 OK", b"r1") and seconds < 0.5
    hold(app_root, bound=20)
    application = worker(app_root)
    (app_root / "hold.json").write_text("{not json")  # unreadable: nothing held either
    assert call(application)[:3:2] == ("200 OK", b"r1")


def test_the_deploys_own_checks_are_never_held(app_root):
    hold(app_root, bound=20)
    # The import check and the canary run the release's loader under this name (steps.py).
    application = runpy.run_path(str(app_root / "releases/r2/.deploy-loader.py"), run_name="deploy_canary")["application"]
    status, _, body, seconds = call(application)
    assert (status, body) == ("200 OK", b"r2") and seconds < 0.5


# The tool ---------------------------------------------------------------------------

@pytest.fixture
def tool(tmp_path, monkeypatch):
    module = host_tool.load()
    module.configure(tmp_path, {"app": "greeting", "user": "nobody", "service": "greeting.service",
                                "static_dir": "", "workers": []})
    for release in ("r1", "r2"):
        (tmp_path / "releases" / release).mkdir(parents=True)
        (tmp_path / "releases" / release / module.META).write_text(json.dumps({"id": release, "venv": "v1"}))
        os.symlink("../../venvs/v1", tmp_path / "releases" / release / ".venv")  # one venv: a chain reload
    os.symlink("releases/r1", tmp_path / "current")
    monkeypatch.setattr(module, "audit", lambda *args, **kwargs: None)
    monkeypatch.setattr(module, "who", lambda: {"user": "ana"})
    monkeypatch.setattr(module, "service_active", lambda: True)
    monkeypatch.setattr(module, "stats", lambda: {})
    monkeypatch.setattr(module, "open_master_fifo", lambda: os.open(os.devnull, os.O_WRONLY))
    module.events = []
    monkeypatch.setattr(module, "reload", lambda mode, fifo=None: module.events.append(
        ("reload", mode, module.held() is not None, module.live())))
    monkeypatch.setattr(module, "health", lambda *args, **kwargs: module.events.append(("health",)))
    return module


def migrate(tool, *commands: str):
    return tool.cmd_migrate(argparse.Namespace(release="r2", hold=20, retry_after=30, command=list(commands),
                                               host_name="web1", run="run1"))


def steps(tool, monkeypatch, fail: str = ""):
    def run(args):
        state = tool.held()
        tool.events.append(("run", args.cmd[0], state and state["bound"]))
        if args.cmd[0] == fail:
            raise tool.Failure(f"before-switch command failed (1): {fail}")

    def canary(args):
        tool.events.append(("canary", tool.held() is not None))
        if fail == "canary":
            raise tool.Failure("release r2 failed its check before the switch")

    monkeypatch.setattr(tool, "cmd_run", run)
    monkeypatch.setattr(tool, "cmd_canary", canary)


def test_the_commands_run_held_and_the_hold_ends_right_after_the_switch(tool, monkeypatch):
    steps(tool, monkeypatch)
    marker = tool.ROOT / "hold.json"
    migrate(tool, "flask db upgrade", "flask backfill")
    assert tool.events == [
        ("reload", "graceful", True, "r1"),  # every worker replaced by a held one
        ("run", "flask db upgrade", 20), ("run", "flask backfill", 20), ("canary", True),
        ("reload", "chain", False, "r2"),  # switched, hold over, then the activation's own reload
        ("health",)]
    assert not os.path.lexists(marker) and tool.live() == "r2"


@pytest.mark.parametrize("fail", ["flask backfill", "canary"])
def test_a_failure_before_the_switch_ends_the_hold_and_leaves_the_live_release(tool, monkeypatch, fail):
    steps(tool, monkeypatch, fail)
    with pytest.raises(tool.Failure):
        migrate(tool, "flask db upgrade", "flask backfill")
    assert tool.held() is None and tool.live() == "r1"
    assert ("reload", "chain", False, "r2") not in tool.events


def test_a_signal_ends_the_hold(tool, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(tool, "cmd_run", lambda args: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(tool.Failure, match="stopped by signal SIGTERM"):
        migrate(tool, "flask db upgrade")
    assert tool.held() is None and tool.live() == "r1"
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_reload_that_fails_ends_the_hold_before_anything_runs(tool, monkeypatch):
    steps(tool, monkeypatch)

    def broken(mode, fifo=None):
        raise tool.Failure("uWSGI workers were not all replaced within 30s")

    monkeypatch.setattr(tool, "reload", broken)
    with pytest.raises(tool.Failure, match="not all replaced"):
        migrate(tool, "flask db upgrade")
    assert tool.held() is None and not tool.events


def test_nothing_is_held_while_uwsgi_is_not_running(tool, monkeypatch):
    steps(tool, monkeypatch)
    monkeypatch.setattr(tool, "service_active", lambda: False)
    assert tool.hold_on(20, 30) is False and tool.held() is None


def test_the_marker_is_roots_readable_and_a_link_is_never_read(tool, tmp_path, capsys):
    assert tool.hold_on(20, 30) is True
    marker = tool.ROOT / "hold.json"
    info = os.lstat(marker)
    assert info.st_uid == os.geteuid() and info.st_mode & 0o777 == 0o644
    assert tool.held()["bound"] == 20 and tool.held()["by"] == {"user": "ana"}
    assert tool.held()["pid"] == os.getpid() and tool.held()["start"] == start_time(os.getpid())
    tool.cmd_hold(argparse.Namespace(state="off"))
    assert not os.path.lexists(marker)
    (tmp_path / "elsewhere.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere.json", marker)
    with pytest.raises(OSError):
        tool.held()
