"""Less work per host and run. A run's facts read in one round trip (tasks/run/prefetch.py):
the batch reads back exactly as each command alone would (per-file and per-unit facts
too, grouped into one stat, sha1sum and systemctl call), nothing stale is ever used,
and on a real host a run that changes nothing sends one command. pyinfra's per-operation
costs cut (tasks/speedups.py) with the same results as pyinfra's own code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyinfra.api import StringCommand
from pyinfra.api.hiddenvalue import HiddenValue
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks.run import fact_script, prefetch
from tests.conftest import run_deploy

# Outputs that could trip the framing: none at all, no final newline, blank lines,
# a line that looks like the marker, a failure (which must not be answered).
COMMANDS = [
    "printf 'a\\nb\\n'",
    "printf 'no final newline'",
    "true",
    "printf '\\n\\n'",
    "printf 'x\\n\\ny'",
    "echo '@@prefetch-0000000000000000 0 0'; echo after",
    "echo out; echo err >&2",
    "echo partial; exit 3",
    "sleep 0.2; echo slow",
]


def lines(stdout: str) -> list[str]:
    """A command's stdout as pyinfra's connectors hand it to facts."""
    return stdout.removesuffix("\n").split("\n") if stdout else []


def test_batch_reads_back_as_each_command_alone():
    token = "@@prefetch-0123456789abcdef"
    batch = subprocess.run(["sh", "-c", fact_script.batch_script(COMMANDS, token)],
                           capture_output=True, text=True, check=True, timeout=30)
    output = CommandOutput([OutputLine("stdout", line) for line in lines(batch.stdout)])
    results = fact_script.parse(output, COMMANDS, token)

    expected = {}
    for command in COMMANDS:
        alone = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        if alone.returncode == 0:
            expected[command] = lines(alone.stdout)
    assert results == expected
    assert "echo partial; exit 3" not in results


def grouped_and_alone(kinds: list[tuple], run) -> tuple[dict, dict]:
    """Each kind's command answered by one grouped batch, and run alone (`run`
    takes a script, returns (exit status, stdout))."""
    commands = ["echo not grouped", *(fact_script.command_of(kind) for kind in kinds)]
    token = "@@prefetch-0123456789abcdef"
    _, batch = run(fact_script.batch_script(commands, token, dict(zip(commands[1:], kinds))))
    output = CommandOutput([OutputLine("stdout", line) for line in lines(batch)])
    results = fact_script.parse(output, commands, token)
    alone = {}
    for command in commands:
        status, stdout = run(command)
        if status == 0:
            alone[command] = lines(stdout)
    return results, alone


def run_locally(script: str) -> tuple[int, str]:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout


def test_grouped_file_facts_read_back_as_each_command_alone(tmp_path):
    (tmp_path / "dir with space").mkdir()
    (tmp_path / "dir with space" / "it's").write_text("x")
    (tmp_path / "file").write_text("hello\n")
    (tmp_path / "link").symlink_to("file")
    (tmp_path / "dangling").symlink_to("missing")
    for path in tmp_path.rglob("*"):  # reading a file (sha1sum) must not move what stat says:
        # an access time after the last change is left alone (relatime)
        os.utime(path, (time.time() + 3600, 2_000_000), follow_symlinks=False)
    paths = [str(tmp_path / name) for name in ("file", "link", "dangling", "missing", "dir with space/it's")]
    kinds = [("stat", path) for path in [*paths, str(tmp_path)]] + [("sha1", path) for path in paths]

    results, alone = grouped_and_alone(kinds, run_locally)
    assert results == alone
    assert len(results) == 1 + len(kinds)  # every one answered
    assert results[fact_script.command_of(("stat", paths[3]))] == []  # missing: no output, as alone


def test_a_failing_group_is_read_live_and_the_others_still_answer(tmp_path):
    (tmp_path / "file").write_text("x")
    # sha1sum of a directory fails: alone, the command falls back to printing nothing.
    kinds = [("sha1", str(tmp_path / "file")), ("sha1", str(tmp_path)), ("stat", str(tmp_path)),
             ("stat", str(tmp_path / "file"))]
    results, alone = grouped_and_alone(kinds, run_locally)
    sha1 = [fact_script.command_of(kind) for kind in kinds[:2]]
    assert not any(command in results for command in sha1)  # both left to be read live
    assert {command: out for command, out in results.items() if command not in sha1} == {
        command: out for command, out in alone.items() if command not in sha1}


def test_only_commands_still_built_as_noted_are_grouped():
    # Noted by a run whose pyinfra built them differently: each runs as noted, alone.
    kinds = {fact_script.command_of(("stat", path)).replace("stat -c", "stat -L -c"): ("stat", path)
             for path in ("/etc/hostname", "/etc/passwd")}
    script = fact_script.batch_script(list(kinds), "@@t", kinds)
    assert all(f"(\n{command}\n)" in script for command in kinds)


def test_fact_kinds_are_noted_for_the_facts_we_group():
    from pyinfra.facts.files import Directory, File, Link, Sha1File, Sha256File
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    from tasks.steps.release import ServiceActive

    kind = fact_script.kind_of
    assert kind(File, ("/srv/a",), {"_sudo": False}) == ("stat", "/srv/a")
    assert kind(Directory, (), {"path": "/srv"}) == ("stat", "/srv")
    assert kind(Link, (), {"path": "/srv/current"}) == ("stat", "/srv/current")
    assert kind(Sha1File, (), {"path": "/srv/a"}) == ("sha1", "/srv/a")
    assert kind(SystemdStatus, (), {"services": ["nginx.service"]}) == ("systemctl", "SubState", "nginx.service")
    assert kind(SystemdEnabled, (), {"services": ["a.service"]}) == ("systemctl", "UnitFileState", "a.service")
    assert kind(ServiceActive, (), {"services": ["a.service"]}) == ("systemctl", "ActiveState", "a.service")
    for fact, args, kwargs in [
        (Sha256File, (), {"path": "/srv/a"}),  # another tool
        (File, ("~/a",), {}),  # relative to the home directory
        (SystemdStatus, (), {"services": ["a.service"], "user_mode": True}),
        (SystemdStatus, (), {"services": ["a.service", "b.service"]}),
        (SystemdStatus, (), {}),  # every unit
        ("cat /a", (), {}),  # a bare command
    ]:
        assert kind(fact, args, kwargs) is None, fact


@pytest.mark.e2e
def test_grouped_unit_facts_read_back_as_each_command_alone(deployed):
    def run_there(script: str) -> tuple[int, str]:
        code, output = deployed.host.container.exec_run(["sh", "-c", script], demux=True)
        return code, (output[0] or b"").decode()

    units = ["greeting.service", "nginx.service", "no-such-unit.service", "sshd.service", "ssh.socket"]
    kinds = [("systemctl", key, unit) for unit in units for key in ("SubState", "UnitFileState", "ActiveState")]
    results, alone = grouped_and_alone(kinds, run_there)
    assert results == alone
    assert len(results) == 1 + len(kinds)
    assert results[fact_script.command_of(("systemctl", "SubState", "sshd.service"))] == [
        "Id=ssh.service", "SubState=running"]  # an alias: one block, under the unit's own name


class FakeHost:
    """Just the methods the batch stands in for; every command it really runs is noted."""

    name = "fake"
    print_prefix = "[fake] "

    def __init__(self):
        self.ran = []

    def get_fact(self, command, **arguments):
        return self.run_shell_command(command, **arguments)  # as pyinfra's facts do, via the host

    def run_shell_command(self, command, **arguments):
        self.ran.append(str(command))
        return True, CommandOutput([OutputLine("stdout", f"live {command}")])

    def put_file(self, *args, **kwargs):
        self.ran.append("upload")
        return True

    rsync = put_file


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(prefetch, "default_connector_arguments", lambda host: {"_sudo": False})
    host = FakeHost()
    batch = prefetch._Batch(host)
    batch.install()
    batch.results = {"cat /a": ["batched a"], "cat /b": ["batched b"]}
    return host, batch


def stdout(result) -> list[str]:
    return result[1].stdout_lines


def test_facts_come_from_the_batch_until_the_host_changes(fake):
    host, batch = fake
    assert stdout(host.get_fact("cat /a", _sudo=False)) == ["batched a"]
    assert stdout(host.get_fact("cat /c", _sudo=False)) == ["live cat /c"]  # not in the batch
    assert host.ran == ["cat /c"]

    host.run_shell_command("apt-get install nginx", _sudo=False)  # an operation changes the host
    assert stdout(host.get_fact("cat /b", _sudo=False)) == ["live cat /b"]
    assert host.ran == ["cat /c", "apt-get install nginx", "cat /b"]
    assert batch.asked == ["cat /a", "cat /c", "cat /b"]  # for the next run's batch


def test_an_upload_ends_the_batch_too(fake):
    host, _ = fake
    host.put_file("local", "/remote")
    assert stdout(host.get_fact("cat /a", _sudo=False)) == ["live cat /a"]


def test_facts_with_other_connection_arguments_are_read_live(fake):
    host, batch = fake
    assert stdout(host.get_fact("cat /a", _sudo=True)) == ["live cat /a"]
    assert batch.asked == []


def test_commands_holding_hidden_values_are_never_written_down(fake):
    host, batch = fake
    command = StringCommand("check-token", HiddenValue("s3cret"))
    assert stdout(host.get_fact(command, _sudo=False)) == ["live check-token *MASKED*"]
    assert batch.asked == []


def test_facts_are_read_again_when_pyinfra_starts_executing(fake, monkeypatch):
    # Between preparing and executing, pyinfra may wait at its prompt for minutes: the
    # batch read before it must not answer the facts pyinfra reads again then.
    host, batch = fake
    monkeypatch.setitem(prefetch._BATCHES, host, batch)
    # Asked so far, and (most operations read their facts only when they execute) what
    # the previous run asked.
    batch.asked = ["cat /a", "cat /b"]
    monkeypatch.setattr(prefetch, "_remembered", lambda host, noted=None: (["cat /b", "cat /c"], {}))
    prefetch._Callbacks.operation_host_start(None, host, "op")
    assert len(host.ran) == 1 and all(f"cat /{name}" in host.ran[0] for name in "abc")  # one command
    assert stdout(host.get_fact("cat /a", _sudo=False)) == ["live cat /a"]  # the old answer is gone
    prefetch._Callbacks.operation_host_start(None, host, "next op")
    assert len(host.ran) == 2  # once per run, not once per operation


def test_after_a_change_facts_are_read_live_until_an_operation_changes_nothing_then_in_one_batch(
        fake, monkeypatch):
    host, batch = fake
    monkeypatch.setitem(prefetch._BATCHES, host, batch)
    live = batch.run_shell_command

    def run(command, **arguments):  # batches run for real, here
        if "@@prefetch-" not in str(command):
            return live(command, **arguments)
        host.ran.append("batch " + " ".join(sorted(set(re.findall(r"echo (\w+)", str(command))))))
        out = subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, check=True, timeout=30)
        return True, CommandOutput([OutputLine("stdout", line) for line in lines(out.stdout)])

    def operation(*changes: str, facts: tuple[str, ...] = ()) -> list[list[str]]:
        """One operation as pyinfra executes it: its facts, then its changes."""
        prefetch._Callbacks.operation_host_start(None, host, "op")
        answers = [stdout(host.get_fact(fact, _sudo=False)) for fact in facts]
        for change in changes:
            host.run_shell_command(change, _sudo=False)
        prefetch._Callbacks.operation_host_success(None, host, "op")
        return answers

    batch.run_shell_command = run
    batch.executing, batch.expected = True, ["echo a", "echo b", "echo c", "echo d"]
    batch.results = {"echo a": ["a"]}  # as read when pyinfra started executing
    assert operation(facts=("echo a",)) == [["a"]]
    assert host.ran == []
    operation("systemctl restart app")
    # Changes in a row (a first deploy): each operation's facts live, no batch that the
    # next change would throw away.
    assert operation("apt-get install nginx", facts=("echo b",)) == [["live echo b"]]
    assert host.ran == ["systemctl restart app", "echo b", "apt-get install nginx"]
    assert operation(facts=("echo new", "echo b")) == [["live echo new"], ["live echo b"]]  # quiet, still live
    # Once an operation changed nothing: every known fact, in one command.
    assert operation(facts=("echo c", "echo b")) == [["c"], ["b"]]
    assert operation(facts=("echo d",)) == [["d"]]
    assert host.ran[-1] == "batch a b c d"
    # Changed again: live until a quiet operation, then the batch again.
    operation("systemctl reload nginx")
    assert operation(facts=("echo a",)) == [["live echo a"]]
    assert operation(facts=("echo d", "echo c")) == [["d"], ["c"]]
    assert host.ran[-3:] == ["systemctl reload nginx", "echo a", "batch a b c d"]


def test_facts_read_side_by_side_by_other_hosts_greenlets_leave_operations_alone(fake):
    # pyinfra prepares every host in its own greenlet, and app servers read the db
    # server's facts from theirs: two reads of one host's facts overlapping must not
    # leave the host "in a fact", or its operations' commands were noted as facts and
    # run again in the next run's batch (a firewall reloaded, a certificate made).
    import gevent

    host, batch = fake
    live = batch.run_shell_command

    def slow(command, **arguments):
        gevent.sleep(0.05 if "/a" in str(command) else 0.1)
        return live(command, **arguments)

    batch.run_shell_command = slow
    first = gevent.spawn(host.get_fact, "cat /x/a", _sudo=False)
    gevent.sleep(0.01)
    second = gevent.spawn(host.get_fact, "cat /x/b", _sudo=False)  # starts later, ends later
    gevent.joinall([first, second], raise_error=True)
    host.run_shell_command("systemctl reload-or-restart pyinfra-flask-firewall.service", _sudo=False)
    assert batch.asked == ["cat /x/a", "cat /x/b"]
    assert batch.reading == {}


def test_facts_marked_not_noted_are_answered_once_and_never_written_down(fake):
    host, batch = fake

    class Lock:
        noted = False

    def get_fact(fact, command, **arguments):  # as pyinfra's get_fact runs a fact's command
        return host.run_shell_command(command, **arguments)

    batch.get_fact = get_fact
    batch.results["take-lock"] = ["LOCK taken"]
    assert stdout(host.get_fact(Lock, "take-lock", _sudo=False)) == ["LOCK taken"]
    assert stdout(host.get_fact(Lock, "take-lock", _sudo=False)) == ["live take-lock"]
    assert "take-lock" not in batch.asked


def test_facts_read_only_while_preparing_are_not_read_again_once_executing(fake, monkeypatch, tmp_path):
    """The health check's fact (`prepare_only`) makes a request to the app: in the
    batch while pyinfra prepares, never in the batches read once it executes (its
    answer is not used then), in this run or the next."""
    host, batch = fake
    monkeypatch.setitem(prefetch._BATCHES, host, batch)
    monkeypatch.setattr(prefetch, "CACHE_DIR", tmp_path)

    class Probe:
        prepare_only = True
        command = None

    def get_fact(fact, command, **arguments):
        return host.run_shell_command(command, **arguments)

    batch.get_fact = lambda fact, *args, **arguments: get_fact(fact, *args, **arguments) if args else \
        host.run_shell_command(fact, **arguments)
    batch.results["probe-app"] = ["yes"]
    assert stdout(host.get_fact(Probe, "probe-app", _sudo=False)) == ["yes"]
    assert stdout(host.get_fact("cat /a", _sudo=False)) == ["batched a"]
    prefetch._Callbacks.operation_host_start(None, host, "op")  # executing: one batch, without the probe
    assert len(host.ran) == 1 and "cat /a" in host.ran[0] and "probe-app" not in host.ran[0]
    host.run_shell_command("systemctl restart app", _sudo=False)
    prefetch._Callbacks.operation_host_success(None, host, "op")
    prefetch._Callbacks.operation_host_start(None, host, "op that changes nothing")
    prefetch._Callbacks.operation_host_success(None, host, "op that changes nothing")
    host.get_fact("cat /a", _sudo=False)  # after a change: the batch again, still without it
    assert "@@prefetch-" in host.ran[2] and "cat /a" in host.ran[2] and "probe-app" not in host.ran[2]
    # Remembered for the next run's first batch, marked.
    prefetch._remember(host)
    noted = json.loads(prefetch._cache_file(host).read_text())
    assert "probe-app" in noted["commands"] and noted["prepare_only"] == ["probe-app"]


def test_the_first_commands_run_ahead_of_the_others(tmp_path):
    token = "@@prefetch-0123456789abcdef"
    mark = tmp_path / "mark"
    # The others start only once the first has finished (they see its file).
    commands = [f"sleep 0.3; echo first > {mark}", f"cat {mark}", f"cat {mark} && echo second"]
    script = fact_script.batch_script(commands, token, ahead=1)
    batch = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=30)
    output = CommandOutput([OutputLine("stdout", line) for line in lines(batch.stdout)])
    assert fact_script.parse(output, commands, token) == {
        commands[0]: [], commands[1]: ["first"], commands[2]: ["first", "second"]}


def test_the_list_is_what_the_last_two_runs_asked(fake, monkeypatch, tmp_path):
    host, batch = fake
    monkeypatch.setattr(prefetch, "CACHE_DIR", tmp_path)
    monkeypatch.setitem(prefetch._BATCHES, host, batch)
    for asked in (["cat /a", "cat /b"], ["cat /b", "cat /c"], ["cat /c"]):
        batch.asked = asked
        prefetch._remember(host)
    assert prefetch._remembered(host) == (["cat /c", "cat /b"], {})


class FakeState:
    print_fact_output = print_fact_input = False
    callback_handlers: list = []


@pytest.mark.parametrize("case", ["other pyinfra", "switched off", "surprise"])
def test_anything_unexpected_leaves_the_run_to_plain_pyinfra(monkeypatch, caplog, case):
    host = FakeHost()
    host.state = FakeState()
    if case == "other pyinfra":
        monkeypatch.setattr(prefetch, "version", lambda name: "3.11.0")
    if case == "surprise":
        monkeypatch.setattr(prefetch, "default_connector_arguments", lambda host: 1 / 0)
    assert prefetch.start(host, enabled=case != "switched off") is False
    assert "get_fact" not in vars(host) and "run_shell_command" not in vars(host)  # pyinfra's own, untouched
    assert host not in prefetch._BATCHES
    if case == "surprise":
        assert "fact batch off for this run (ZeroDivisionError" in caplog.text


def test_the_remembered_commands_live_outside_the_checkout(tmp_path):
    from tasks import REPO_ROOT

    assert REPO_ROOT not in prefetch.CACHE_DIR.parents
    # In this machine's cache, with uWSGI's wheels: where PYINFRA_FLASK_CACHE moves them (and
    # with the wheels off, where they would be). The test runs keep theirs in the run's own.
    script = "from tasks.run import prefetch; print(prefetch.CACHE_DIR)"
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    where = {}
    for setting in (str(tmp_path / "moved"), "off", ""):
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**environment, "PYINFRA_FLASK_CACHE": setting}, check=True)
        where[setting] = done.stdout.strip()
    assert where == {str(tmp_path / "moved"): str(tmp_path / "moved/facts"),
                     "off": str(tmp_path / "xdg/pyinfra-flask/facts"), "": str(tmp_path / "xdg/pyinfra-flask/facts")}



# The remembered list (issue 24): its commands run as root on every host, --dry included ---

class LocalHost(FakeHost):
    """Runs every command for real, on this machine: a planted command would leave its mark."""

    connected = True

    def __init__(self):
        super().__init__()
        self.state = FakeState()

    def run_shell_command(self, command, **arguments):
        self.ran.append(str(command))
        done = subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, timeout=30, check=False)
        return done.returncode == 0, CommandOutput([OutputLine("stdout", line) for line in lines(done.stdout)])


PLANTED = ["file writable by others", "file writable by group", "file is a link", "directory writable by others",
           "directory is a link", "file of another user", "directory of another user"]


def _plant_cache(tmp_path, monkeypatch, host, case: str) -> tuple[Path, str]:
    """A remembered list for `host` whose command would touch a mark; the mark, and
    what the warning must say."""
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    cache.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o700)
    monkeypatch.setattr(prefetch, "CACHE_DIR", cache)
    mark = tmp_path / "planted-command-ran"
    content = json.dumps({"format": prefetch.FORMAT, "host": host.name, "commands": [f"touch {mark}"]})
    target = prefetch._cache_file(host)
    if case == "file is a link":
        (elsewhere / "list.json").write_text(content)
        target.symlink_to(elsewhere / "list.json")
        return mark, f"{target} is a symbolic link"
    if case == "directory is a link":
        (elsewhere / target.name).write_text(content)
        (elsewhere / target.name).chmod(0o600)
        cache.rmdir()
        cache.symlink_to(elsewhere)
        return mark, f"{cache} is a symbolic link"
    target.write_text(content)
    target.chmod(0o600)
    if case == "file writable by others":
        target.chmod(0o646)
        return mark, f"{target} is writable by others than you (mode 646)"
    if case == "file writable by group":
        target.chmod(0o660)
        return mark, f"{target} is writable by others than you (mode 660)"
    if case == "directory writable by others":
        cache.chmod(0o777)
        return mark, f"{cache} is writable by others than you (mode 777)"
    if case == "safe":
        return mark, ""
    if os.getuid() != 0:
        pytest.skip("planting another user's file takes root")
    if case == "file of another user":
        os.chown(target, 65534, 65534)
        return mark, f"{target} is owned by uid 65534, not by you (uid 0)"
    if case == "directory of another user":
        os.chown(cache, 65534, 65534)
        return mark, f"{cache} is owned by uid 65534, not by you (uid 0)"
    raise AssertionError(case)


@pytest.fixture
def local_host(monkeypatch):
    monkeypatch.setattr(prefetch, "default_connector_arguments", lambda host: {"_sudo": False})
    monkeypatch.setattr(FakeState, "callback_handlers", [])
    monkeypatch.setattr(FakeState, "add_callback_handler", lambda self, handler: self.callback_handlers.append(handler),
                        raising=False)
    host = LocalHost()
    yield host
    prefetch._BATCHES.pop(host, None)


@pytest.mark.parametrize("case", PLANTED)
def test_a_remembered_list_anyone_else_could_write_is_never_run(local_host, tmp_path, monkeypatch, caplog, case):
    mark, why = _plant_cache(tmp_path, monkeypatch, local_host, case)
    with caplog.at_level("WARNING", logger="pyinfra"):
        assert prefetch.start(local_host) is True  # the run goes on, its facts read one by one
        prefetch.read_again(local_host)  # also when pyinfra starts executing
    assert not mark.exists() and local_host.ran == []
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and f"[fake] fact batch: ignored {why}: its commands run as root" in warnings[0], warnings


def test_the_users_own_list_is_used(local_host, tmp_path, monkeypatch, caplog):
    """The control: the same planted list, safe, is run (so the test above can see a run)."""
    mark, _ = _plant_cache(tmp_path, monkeypatch, local_host, "safe")
    with caplog.at_level("WARNING", logger="pyinfra"):
        assert prefetch.start(local_host) is True
    assert mark.exists() and caplog.records == []


@pytest.mark.parametrize("case", ["file is a link", "directory writable by others", "directory is a link"])
def test_the_list_is_written_mode_600_in_a_700_directory_through_no_link(local_host, tmp_path, monkeypatch, case):
    _plant_cache(tmp_path, monkeypatch, local_host, case)
    batch = prefetch._Batch(local_host)
    monkeypatch.setitem(prefetch._BATCHES, local_host, batch)
    batch.asked = ["cat /etc/hostname"]
    prefetch._remember(local_host)
    elsewhere = tmp_path / "elsewhere"
    assert all("cat /etc/hostname" not in path.read_text() for path in elsewhere.iterdir())  # no link followed
    target, cache = prefetch._cache_file(local_host), tmp_path / "cache"
    if case == "directory is a link":
        assert cache.is_symlink()  # not written at all
        return
    assert stat_mode(cache) == 0o700 and not target.is_symlink() and stat_mode(target) == 0o600
    assert json.loads(target.read_text())["commands"] == ["cat /etc/hostname"]
    assert prefetch._noted(local_host)["commands"] == ["cat /etc/hostname"]  # and the next run uses it


def test_a_first_list_is_written_private(local_host, tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "CACHE_DIR", tmp_path / "cache" / "pyinfra-flask" / "facts")
    batch = prefetch._Batch(local_host)
    monkeypatch.setitem(prefetch._BATCHES, local_host, batch)
    batch.asked = ["cat /etc/hostname"]
    prefetch._remember(local_host)
    assert stat_mode(prefetch.CACHE_DIR) == 0o700 and stat_mode(prefetch._cache_file(local_host)) == 0o600
    assert [path.name for path in prefetch.CACHE_DIR.iterdir()] == [prefetch._cache_file(local_host).name]


def stat_mode(path: Path) -> int:
    return path.lstat().st_mode & 0o777


@pytest.mark.e2e
def test_a_run_that_changes_nothing_reads_its_facts_in_two_commands(fork, tmp_path):
    def remote_commands(run) -> int:
        return sum("Running command on" in line for line in run.output.splitlines())

    run_deploy(fork, tmp_path)  # notes this host's facts
    # Changed behind the deploy's back: found, although the batch's list is from before.
    fork.exec("echo 'stray' > /etc/logrotate.d/pyinfra-flask-greeting")
    fixing = run_deploy(fork, tmp_path, "--debug")
    assert fixing.changed_operations() == ["App server | Log rotation | No log rotation needed for greeting"]
    assert fork.exec("ls /etc/logrotate.d/").split().count("pyinfra-flask-greeting") == 0
    # The removal ended the batch: the next operation's fact was read live (it might have
    # changed the host too), and once it changed nothing the facts still to come were
    # read again in one more batch (the two batches, the removal, the live read, the
    # batch after it).
    assert remote_commands(fixing) == 5, fixing.output[-4000:]
    assert sum("prefetched" in line for line in fixing.output.splitlines()) == 3

    quiet = run_deploy(fork, tmp_path, "--debug")
    assert quiet.changed_operations() == [], quiet.output[-4000:]
    # One batch while pyinfra prepares (the deploy lock taken first, in it), one when it
    # executes (it reads every fact again); the lock is free once the run disconnects:
    # two commands, whatever the facts.
    assert remote_commands(quiet) == 2, quiet.output[-4000:]
    assert sum("prefetched" in line for line in quiet.output.splitlines()) == 2
    # Switched off: every fact is its own command.
    plain = run_deploy(fork, tmp_path, "--debug", data={"fact_batch": False})
    assert plain.changed_operations() == [] and remote_commands(plain) > 20
    # With the fact commands shown (-vv), what is shown is what ran: no batch.
    shown = run_deploy(fork, tmp_path, "-vv")
    assert shown.changed_operations() == []
    assert "prefetch" not in shown.output
