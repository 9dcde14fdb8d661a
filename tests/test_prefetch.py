"""Less work per host and run. A run's facts read in one round trip (tasks/prefetch.py):
the batch reads back exactly as each command alone would, nothing stale is ever used,
and on a real host a run that changes nothing sends one command. pyinfra's per-operation
costs cut (tasks/speedups.py) without changing the operation order."""

from __future__ import annotations

import inspect
import subprocess
from types import SimpleNamespace

import pytest
from pyinfra.api import StringCommand
from pyinfra.api.hiddenvalue import HiddenValue
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks import prefetch, speedups
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
    batch = subprocess.run(["sh", "-c", prefetch._batch_script(COMMANDS, token)],
                           capture_output=True, text=True, check=True, timeout=30)
    output = CommandOutput([OutputLine("stdout", line) for line in lines(batch.stdout)])
    results = prefetch._parse(output, COMMANDS, token)

    expected = {}
    for command in COMMANDS:
        alone = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        if alone.returncode == 0:
            expected[command] = lines(alone.stdout)
    assert results == expected
    assert "echo partial; exit 3" not in results


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
    monkeypatch.setattr(prefetch, "_default_connector_arguments", lambda host: {"_sudo": False})
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


def test_speedups_keep_pyinfra_operation_order(monkeypatch):
    from pyinfra.api import util

    state = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=7)

    def operation():
        return util.get_operation_order_from_stack(state)

    def task():  # the same frames at two places: each keeps its own line
        first = operation()
        second = operation()
        return first, second

    orders = []
    for stack, frame_info in ((inspect.stack, inspect.getframeinfo), (speedups._stack, speedups._frame_info)):
        monkeypatch.setattr(util, "stack", stack)
        monkeypatch.setattr(util, "getframeinfo", frame_info)
        orders.append(task())  # one line, so both orders come from the same frames
    assert orders[0] == orders[1]
    first, second = orders[0]
    assert len(first) >= 3 and first != second  # the op number, then lines down to the operation


@pytest.mark.parametrize("case", ["plain", "host data", "call arguments", "deploy arguments", "bad type"])
def test_speedups_pop_the_same_global_arguments(case):
    from pyinfra.api import Config, Inventory, State, arguments
    from pyinfra.api.exceptions import ArgumentTypeError

    inventory = Inventory(
        (["web1", ("web2", {"_sudo": True, "_env": {"A": "host"}, "_success_exit_codes": [0, 2]})], {"_shell_executable": "bash"}),
        app_servers=(["web2"], {"_env": {"A": "group"}, "_sudo_user": "deploy", "app_name": "x"}),
    )
    state = State(inventory, Config(SUDO_USER="config-user"))
    host = inventory.get_host("web2")
    kwargs = {"name": "an operation", "_timeout": 30} if case == "call arguments" else {}
    if case == "deploy arguments":
        host.current_deploy_kwargs = {"_sudo": False, "_chdir": "/srv"}
    if case == "bad type":
        kwargs = {"_sudo": "yes"}
    if case == "host data":
        host.data.override_me = 1  # pyinfra's override data, searched first

    results = []
    for pop in (arguments.pop_global_arguments, speedups._pop_global_arguments):
        given = dict(kwargs)
        try:
            popped, found = pop(state, host, given)
        except ArgumentTypeError as error:
            results.append(("raised", str(error)))
        else:
            results.append((popped, found, given))
    assert results[0] == results[1]
    if case == "plain":
        popped = results[0][0]
        assert (popped["_sudo"], popped["_sudo_user"], popped["_env"]) == (True, "deploy", {"A": "host"})
        # A copy, as pyinfra hands out: changing it leaves the host's data alone.
        assert popped["_success_exit_codes"] == [0, 2]
        assert results[1][0]["_success_exit_codes"] is not inventory.get_host_data("web2")["_success_exit_codes"]


@pytest.mark.e2e
def test_a_run_that_changes_nothing_sends_one_command(fork, tmp_path):
    def remote_commands(run) -> int:
        return sum("Running command on" in line for line in run.output.splitlines())

    run_deploy(fork, tmp_path)  # notes this host's facts
    # Changed behind the deploy's back: found, although the batch's list is from before.
    fork.exec("echo 'stray' > /etc/logrotate.d/pyinfra-flask-greeting")
    fixing = run_deploy(fork, tmp_path, "--debug")
    assert fixing.changed_operations() == ["Log rotation | No log rotation needed for greeting"]
    assert fork.exec("ls /etc/logrotate.d/").split().count("pyinfra-flask-greeting") == 0
    # The removal ended the batch: every later fact was read from the host again.
    assert remote_commands(fixing) > 10

    quiet = run_deploy(fork, tmp_path, "--debug")
    assert quiet.changed_operations() == [], quiet.output[-4000:]
    assert remote_commands(quiet) == 1, quiet.output[-4000:]
    # With the fact commands shown (-vv), what is shown is what ran: no batch.
    shown = run_deploy(fork, tmp_path, "-vv")
    assert shown.changed_operations() == []
    assert "prefetch" not in shown.output
