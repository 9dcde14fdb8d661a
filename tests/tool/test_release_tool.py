"""The host-side release tool (files/release_tool/) against a temporary root: no
Docker, no systemd. Its choices (rollback target, what prune keeps, the lock) and
its refusals (links where the app user can write)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading

import pytest

from tasks import tool as host_tool


@pytest.fixture
def tool(tmp_path):
    # Importing it reads nothing (its settings are read in main()/configure()).
    module = host_tool.load()
    run = tmp_path / "run"
    run.mkdir()
    module.configure(tmp_path, {
        "app": "greeting", "user": "nobody", "keep_releases": 2, "service": "greeting.service",
        "master_fifo": str(run / "master.fifo"), "stats_socket": str(run / "stats.sock"),
    })
    (tmp_path / "releases").mkdir()
    return module


def make_release(tool, name: str) -> None:
    path = tool.RELEASES / name
    path.mkdir()
    (path / tool.META).write_text(json.dumps({"id": name, "venv": "v1"}))


def entry(event, release, **extra):
    return {"event": event, "release": release, **extra}


# Rollback target and prune, by the host's record ---------------------------------

SKEWED = "29990101T000000Z-skew"  # a laptop whose clock was far ahead
X, Y, Z = "20261201T100000Z-aaaa", "20261201T110000Z-bbbb", "20261201T120000Z-cccc"


def test_rollback_goes_to_the_release_live_before_by_the_record_not_by_name(tool):
    history = [entry("live", X), entry("live", SKEWED), entry("live", Y)]
    present = {X, SKEWED, Y}
    # By name, the release before Y would be X; by the record it is the skewed one.
    assert tool.rollback_target(history, Y, present) == SKEWED
    # Rolling back again goes further back, not to and fro.
    history.append(entry("live", SKEWED, kind="rollback", **{"from": Y}))
    assert tool.rollback_target(history, SKEWED, present) == X
    history.append(entry("live", X, kind="rollback", **{"from": SKEWED}))
    assert tool.rollback_target(history, X, present) is None
    # A release named explicitly goes on top again; a rollback from it returns.
    history.append(entry("live", Y, kind="rollback-to", **{"from": X}))
    assert tool.rollback_target(history, Y, present) == X


def test_failed_and_removed_releases_are_never_rollback_targets(tool):
    history = [entry("live", X), entry("live", Y), entry("switched", Z), entry("failed", Z),
               entry("live", Y, kind="restored")]
    assert tool.rollback_target(history, Y, {X, Y, Z}) == X
    history += [entry("live", Z, kind="rollback-to"), entry("removed", X)]
    # Z went live later by hand, but it failed once: still never a target of `rollback`.
    assert tool.rollback_target(history, Z, {Y, Z}) == Y
    assert tool.rollback_target(history, Y, {Y, Z}) is None


def test_releases_the_record_does_not_know_come_after_it_by_name(tool):
    assert tool.rollback_target([], Y, {X, Y, Z}) == X
    assert tool.rollback_target([entry("live", Z)], Z, {X, Y, Z}) == Y


def test_prune_keeps_the_newest_by_the_record_not_by_name(tool):
    history = [entry("created", X), entry("live", X), entry("live", SKEWED), entry("live", Y),
               entry("live", SKEWED, kind="rollback", **{"from": Y}), entry("live", Y, kind="rollback-to"),
               entry("created", Z), entry("live", Z)]
    names = sorted([X, Y, Z, SKEWED])
    assert tool.prune_choice(names, history, Z, keep=2) == [X, SKEWED]
    # The live release is always kept, failed ones go first.
    history += [entry("switched", "20261201T130000Z-dddd"), entry("failed", "20261201T130000Z-dddd")]
    names.append("20261201T130000Z-dddd")
    assert "20261201T130000Z-dddd" in tool.prune_choice(sorted(names), history, Z, keep=3)
    assert sorted(tool.prune_choice(names, history, X, keep=1)) == sorted(set(names) - {X, Z})


def test_history_is_appended_and_survives_a_cut_line(tool):
    tool.record("live", X, kind="deploy")
    with open(tool.HISTORY, "a") as handle:
        handle.write('{"event": "live", "rel')  # a crash mid-write
    tool.record("live", Y, kind="deploy")
    assert [e["release"] for e in tool.read_history()] == [X, Y]
    assert tool.confirmed() == Y
    assert oct(stat.S_IMODE(os.stat(tool.HISTORY).st_mode)) == "0o640"


def test_history_through_a_link_is_refused(tool, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    tool.HISTORY.symlink_to(elsewhere)
    with pytest.raises(OSError):
        tool.record("live", X)
    assert elsewhere.read_text() == ""


def test_prune_removes_by_the_record(tool):
    for name in (X, SKEWED, Y):
        make_release(tool, name)
    for name in (X, SKEWED, Y):
        tool.record("live", name)
    tool.CURRENT.symlink_to(f"releases/{Y}")
    tool.cmd_prune(None)
    assert sorted(p.name for p in tool.RELEASES.iterdir()) == sorted([SKEWED, Y])


# The deploy lock ------------------------------------------------------------------

def test_lock_is_taken_once_and_names_its_holder(tool):
    alice = {"user": "alice", "machine": "laptop-a", "pid": 4242}
    assert tool.lock_take("run-a", alice, wait=0) == (True, None, None)
    assert tool.lock_take("run-a", alice, wait=0)[0], "the same run may ask again"
    taken, holder, broken = tool.lock_take("run-b", {"user": "bob", "machine": "ci", "pid": 1}, wait=0.3)
    assert not taken and broken is None
    assert holder["run"] == "run-a" and holder["user"] == "alice" and holder["age"] >= 0
    line = tool.describe_holder(holder)
    assert line.startswith("alice@laptop-a (pid 4242, run run-a) since ") and "host time" in line
    assert stat.S_IMODE(os.stat(tool.LOCK).st_mode) == 0o600
    # Only its holder releases it.
    assert not tool.lock_release("run-b") and tool.LOCK.exists()
    assert tool.lock_release("run-a") and not tool.LOCK.exists()


def test_lock_is_broken_only_as_asked(tool):
    tool.lock_take("dead-run", {"user": "alice"}, wait=0)
    # Breaking a run that is not the holder (e.g. one that just replaced it) does nothing.
    assert tool.lock_take("run-b", {}, wait=0, break_run="other-run")[0] is False
    taken, _, broken = tool.lock_take("run-b", {}, wait=0, break_run="dead-run")
    assert taken and broken["run"] == "dead-run"
    taken, _, broken = tool.lock_take("run-c", {}, wait=0, force=True)
    assert taken and broken["run"] == "run-b"
    assert json.loads(tool.LOCK.read_text())["run"] == "run-c"


def test_a_waiting_run_gets_the_lock_when_it_is_released(tool):
    tool.lock_take("run-a", {}, wait=0)
    releaser = threading.Timer(0.5, tool.lock_release, args=["run-a"])
    releaser.start()
    taken, _, _ = tool.lock_take("run-b", {}, wait=5)
    releaser.join()
    assert taken and json.loads(tool.LOCK.read_text())["run"] == "run-b"


def test_unreadable_lock_still_counts_as_held(tool):
    tool.LOCK.write_text("garbage")
    taken, holder, _ = tool.lock_take("run-b", {}, wait=0)
    assert not taken and holder["run"] == "?"


def test_lock_taken_over_ssh_is_free_once_that_connection_is_gone(tool, monkeypatch):
    # The holder names the sshd process serving its connection; here a stand-in: this
    # test's parent process while it lives, a process that has ended after.
    parent = tool._process(os.getppid())
    monkeypatch.setattr(tool, "SSH_SERVERS", (parent[0],))
    if tool._process(os.getpid())[0] == parent[0]:
        pytest.skip("this process has the same name as its parent")
    alive = tool.ssh_connection()
    assert alive == {"pid": os.getppid(), "start": parent[2], "boot": tool._boot_id()}
    assert tool.lock_take("run-a", {"user": "alice", "connection": alive}, wait=0)[0]
    taken, holder, _ = tool.lock_take("run-b", {}, wait=0)
    assert not taken and holder["run"] == "run-a", "its connection is alive: held"

    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()
    tool.LOCK.unlink()
    ended = {"pid": gone.pid, "start": "1", "boot": tool._boot_id()}
    assert tool.lock_take("run-a", {"user": "alice", "connection": ended}, wait=0)[0]
    assert tool.lock_holder() is None and tool.LOCK.exists()  # free, nothing to release
    assert tool.lock_take("run-b", {"user": "bob"}, wait=0) == (True, None, None)  # taken, not broken
    assert json.loads(tool.LOCK.read_text())["run"] == "run-b"
    # Another boot, or another process with the same pid since: gone as well.
    for stale in ({**alive, "boot": "other-boot"}, {**alive, "start": "0"}):
        assert tool.connection_gone({"connection": stale})
    assert not tool.connection_gone({"run": "no connection named"})


def test_a_waiting_run_gets_the_lock_when_the_holders_connection_ends(tool, monkeypatch):
    holder = subprocess.Popen(["sleep", "0.5"])
    name, _, start = tool._process(holder.pid)
    monkeypatch.setattr(tool, "SSH_SERVERS", (name,))
    connection = {"pid": holder.pid, "start": start, "boot": tool._boot_id()}
    tool.lock_take("run-a", {"connection": connection}, wait=0)
    reaper = threading.Thread(target=holder.wait)  # gone from /proc once reaped
    reaper.start()
    taken, _, broken = tool.lock_take("run-b", {}, wait=5)
    reaper.join()
    assert taken and broken is None and json.loads(tool.LOCK.read_text())["run"] == "run-b"


def test_lock_of_a_gone_connection_stays_held_while_its_command_is_at_work(tool):
    """A command cut off from its laptop (an activation, say) may run on to its end:
    until it has, the next run does not get the lock."""
    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()
    tool.lock_take("run-a", {"connection": {"pid": gone.pid, "start": "1", "boot": tool._boot_id()}}, wait=0)
    with tool._working():  # run-a's `activate`, still going
        taken, holder, _ = tool.lock_take("run-b", {}, wait=0)
        assert not taken and holder["run"] == "run-a"
    assert tool.lock_take("run-b", {}, wait=0)[0]
    # Changing commands hold the work flock; reading ones do not.
    assert set(tool.CHANGING) == {"build-venv", "check", "run", "canary", "ship", "activate", "rollback", "prune",
                                 "assets", "migrate", "hold", "split", "canary-start", "canary-verdict",
                                 "canary-finish"}


# No links followed where the app user can write ----------------------------------

def test_master_fifo_replaced_by_a_link_is_refused(tool, tmp_path):
    fifo = tool.CONFIG["master_fifo"]
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # uWSGI's end
    try:
        fd = tool.open_master_fifo()
        os.write(fd, b"c")
        os.close(fd)
        assert os.read(reader, 10) == b"c"
        # The app user swaps it for a link to one of root's files.
        precious = tmp_path / "root-file"
        precious.write_text("root's\n")
        os.unlink(fifo)
        os.symlink(precious, fifo)
        with pytest.raises(tool.Failure, match="symbolic link"):
            tool.open_master_fifo()
        assert precious.read_text() == "root's\n"
        # ... or for a plain file.
        os.unlink(fifo)
        with open(fifo, "w") as handle:
            handle.write("x")
        with pytest.raises(tool.Failure, match="not a FIFO"):
            tool.open_master_fifo()
        assert open(fifo).read() == "x"
    finally:
        os.close(reader)


def _serve_stats(path: str, payload: bytes) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(payload)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    return server


def test_stats_socket_is_connected_to_only_if_it_is_one(tool, tmp_path, monkeypatch):
    path = tool.CONFIG["stats_socket"]
    server = _serve_stats(path, b'{"workers": [{"pid": 7}]}')
    monkeypatch.setattr(tool, "main_pid", os.getpid)  # this process serves it: "uWSGI's master"
    try:
        assert tool.stats() == {"workers": [{"pid": 7}]}
        assert tool.stats_workers(tool.stats()) == [{"pid": 7}]
        # A link to another socket (say, one of root's daemons) is never connected to.
        other = str(tmp_path / "roots.sock")
        other_server = _serve_stats(other, b'{"workers": [{"pid": 666}]}')
        os.rename(path, str(tmp_path / "moved.sock"))
        os.symlink(other, path)
        with pytest.raises(tool.Failure, match="symbolic link"):
            tool.stats()
        os.unlink(path)
        with open(path, "w"):
            pass
        with pytest.raises(tool.Failure, match="not a socket"):
            tool.stats()
        os.unlink(path)
        assert tool.stats() is None  # not there (uWSGI starting): no answer yet
        other_server.close()
    finally:
        server.close()


def test_list_and_history_commands(tool, capsys):
    make_release(tool, X)
    make_release(tool, Y)
    (tool.RELEASES / X / ".venv").symlink_to(tool.VENVS / "v1")
    (tool.RELEASES / Y / ".venv").symlink_to(tool.VENVS / "v1")
    tool.CURRENT.symlink_to(f"releases/{Y}")
    tool.record("live", X)
    tool.record("switched", Y)
    tool.record("failed", Y, reason="answered 500")

    class Args:
        json = False
        last = 10

    tool.cmd_list(Args)
    tool.cmd_history(Args)
    out = capsys.readouterr().out
    assert f"{Y}  commit=-  venv=v1  * live" in out
    assert "failed   " + Y in out and "reason=answered 500" in out
    assert tool.confirmed() == X


# The settings' contract ---------------------------------------------------------

def test_the_deploy_writes_exactly_the_settings_the_tool_reads(tmp_path):
    """tasks/steps/release.py builds release-tool.json to the tool's own `Settings`; the
    rendered file is what `configure` reads back, key for key."""
    import typing

    from jinja2 import Template

    from tasks import TEMPLATES
    from tasks.steps import release
    from tasks.config.checks import validate

    s = validate({"app_source": "files/greeting", "shared_paths": ["instance/"]})
    settings = release.tool_settings(s)
    contract = typing.get_type_hints(host_tool.load().Settings)
    assert set(settings) == set(contract) and host_tool.settings_contract() == contract
    assert settings["writable"] == ["/srv/greeting/shared/instance"]
    assert settings["health"]["url"] == s.health_url
    rendered = Template((TEMPLATES / "release-tool.json.j2").read_text()).render(settings=settings)
    (tmp_path / "release-tool.json").write_text(rendered)
    module = host_tool.load()
    module.configure(tmp_path)
    assert module.CONFIG == settings
