"""How rollout.py reads an inventory and cuts it into batches (no hosts)."""

from __future__ import annotations

import re
import sys

import pytest

import rollout
from tasks import REPO_ROOT
from tasks.run import outcomes
from tasks.config.settings import RELEASE_ID_RE


@pytest.mark.parametrize(("text", "expected"), [
    # The README's form: (hosts, group data), hosts as (name, data).
    ("app_servers = ([('web1', {'private_address': '10.0.0.11'}), ('web2', {})], {'_sudo': True})\n"
     "load_balancers = ([('lb1', {})], {})\n", (["web1", "web2"], ["lb1"])),
    # No app_servers group: every host that is not a balancer is one.
    ("hosts = ['a', ('b', {'x': 1})]\nload_balancers = ['lb']\nothers = (['c'], {})\n_private = ['z']\n",
     (["a", "b", "c"], ["lb"])),
    ("app_servers = ['only']\n", (["only"], [])),
])
def test_inventory_groups_are_read_as_pyinfra_reads_them(tmp_path, text, expected):
    path = tmp_path / "inventory.py"
    path.write_text(text)
    assert rollout.load_inventory(str(path)) == expected



def test_without_an_app_servers_group_a_db_servers_host_is_no_app_server(tmp_path):
    # The deploy gives it PostgreSQL only (tasks/config/topology.py): no batch deploys an app to it.
    path = tmp_path / "inventory.py"
    path.write_text("hosts = ['web1', 'web2']\ndb_servers = ['db1']\nload_balancers = ['lb1']\n")
    assert rollout.load_inventory(str(path)) == (["web1", "web2"], ["lb1"])
    assert rollout.batches(rollout.load_inventory(str(path))[0], "1") == [["web1"], ["web2"]]

def test_batches_by_count_and_percentage():
    hosts = [f"web{i}" for i in range(1, 6)]
    assert rollout.batches(hosts, "2") == [["web1", "web2"], ["web3", "web4"], ["web5"]]
    assert rollout.batches(hosts, "40%") == [["web1", "web2"], ["web3", "web4"], ["web5"]]
    assert rollout.batches(hosts, "1%") == [[h] for h in hosts]
    with pytest.raises(SystemExit, match="--batch must be at least 1"):
        rollout.batches(hosts, "0")


# -- How each stage's outcome is read: what the pyinfra run itself wrote ------------

OPS = '''from pyinfra import host
from pyinfra.operations import server
server.shell(name="Succeed, or fail where asked", commands=["false" if host.data.get("fail") else "true"])
'''
GHOST = {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_user": "root", "ssh_connect_retries": 0}


def run_stage(tmp_path, monkeypatch, hosts, inventory_hosts, dry=False):
    """rollout.pyinfra as a rollout calls it, with a one-command deploy file on this
    machine (@local: `true` or `false`) instead of deploy.py."""
    ops = tmp_path / "ops.py"
    ops.write_text(OPS)
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"hosts = {inventory_hosts!r}\n")
    monkeypatch.setattr(rollout, "DEPLOY", str(ops))
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return rollout.pyinfra(str(inventory), hosts, ["-y"], "test", workdir, dry=dry)


def test_a_host_whose_run_ends_is_done_and_an_unreachable_one_failed(tmp_path, monkeypatch):
    stage = run_stage(tmp_path, monkeypatch, ["@local", "ghost"], [("@local", {}), ("ghost", GHOST)])
    assert stage.found["@local"] == outcomes.Outcome("@local", "Disconnect", failed=False)
    assert stage.found["ghost"] == outcomes.Outcome("ghost", "Connect", failed=True)
    assert (stage.code, stage.done, stage.failed, stage.ok) == (1, ["@local"], ["ghost"], False)


def test_a_host_whose_operation_fails_is_failed(tmp_path, monkeypatch):
    stage = run_stage(tmp_path, monkeypatch, ["@local"], [("@local", {"fail": True})])
    # pyinfra stops the run ("No hosts remaining!"): the stage reached says so too.
    assert stage.found["@local"] == outcomes.Outcome("@local", "Execute", failed=True)
    assert (stage.done, stage.failed, stage.ok) == ([], ["@local"], False)


def test_preflight_is_a_dry_run_over_the_whole_inventory(tmp_path, monkeypatch):
    stage = run_stage(tmp_path, monkeypatch, ["@local"], [("@local", {"fail": True})], dry=True)
    assert stage.found["@local"] == outcomes.Outcome("@local", "Prepare", failed=False)
    assert stage.ok and stage.done == ["@local"]
    stage = run_stage(tmp_path, monkeypatch, ["@local"], [("@local", {}), ("ghost", GHOST)], dry=True)
    assert (stage.ok, stage.done, stage.failed) == (False, [], ["ghost"])  # not in the limit, still checked


@pytest.mark.parametrize(("stage", "done", "failed"), [
    # No line for a host (the run died before it got there): not done, never assumed.
    (rollout.Stage(["a", "b"], 0, {"a": outcomes.Outcome("a", "Disconnect", False)}), ["a"], ["b"]),
    # One host failed, the other finished: pyinfra exits 1, the other is still done.
    (rollout.Stage(["a", "b"], 1, {"a": outcomes.Outcome("a", "Disconnect", False),
                                   "b": outcomes.Outcome("b", "Execute", True)}), ["a"], ["b"]),
    # The run stopped in its prepare stage (a bad setting somewhere): no host done.
    (rollout.Stage(["a"], 1, {"a": outcomes.Outcome("a", "Prepare", False)}), [], ["a"]),
    # A dry run that failed as a whole names only the hosts it failed.
    (rollout.Stage(["a", "b"], 1, {"a": outcomes.Outcome("a", "Prepare", False),
                                   "b": outcomes.Outcome("b", "Connect", True)}, dry=True), [], ["b"]),
])
def test_stage_outcomes(stage, done, failed):
    assert (stage.done, stage.failed, stage.ok) == (done, failed, False)


def test_outcomes_file_missing_or_written_twice(tmp_path):
    assert outcomes.read(tmp_path / "none.jsonl") == {}
    path = tmp_path / "outcomes.jsonl"
    path.write_text('{"host": "a", "stage": "Connect", "failed": true}\n'
                    '{"host": "a", "stage": "Disconnect", "failed": false}\n')
    assert outcomes.read(path) == {"a": outcomes.Outcome("a", "Disconnect", False)}


# -- One release id for the whole rollout ---------------------------------------------

def fake_rollout(monkeypatch, capsys, inventory, *argv, fail=(), unreachable=()):
    """main() with each pyinfra run replaced by one that records its arguments, fails
    the hosts in `fail` when it deploys them and those in `unreachable` always."""
    runs = []

    def pyinfra(inv, hosts, extra, label, workdir, dry=False):
        runs.append((label, list(hosts), extra))
        failing = set(unreachable) | (set() if dry else set(fail))
        found = {h: outcomes.Outcome(h, "Connect" if h in unreachable else "Prepare" if dry else "Disconnect",
                                     h in failing) for h in hosts}
        return rollout.Stage(hosts, 1 if failing & set(hosts) else 0, found, dry)

    monkeypatch.setattr(rollout, "pyinfra", pyinfra)
    monkeypatch.setattr(sys, "argv", ["rollout.py", str(inventory), *argv])
    code = rollout.main()
    return code, runs, capsys.readouterr()


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "inventory.py"
    path.write_text("app_servers = ['web1', 'web2', 'web3']\nload_balancers = ['lb1']\n")
    return path


def test_every_stage_deploys_one_release_id(monkeypatch, capsys, inventory):
    code, runs, out = fake_rollout(monkeypatch, capsys, inventory, "--batch", "2", "--data", "keep_releases=3")
    assert code == 0
    assert [(label, hosts) for label, hosts, _ in runs] == [
        ("Preflight (changes nothing)", ["web1", "web2", "web3", "lb1"]), ("Batch 1 of 2", ["web1", "web2"]),
        ("Batch 2 of 2", ["web3"]), ("Load balancers", ["lb1"])]
    ids = {value for _, _, extra in runs for value in extra if value.startswith("release_id=")}
    assert len(ids) == 1, ids
    release_id = ids.pop().removeprefix("release_id=")
    assert re.match(RELEASE_ID_RE, release_id)
    assert all("keep_releases=3" in extra for _, _, extra in runs)
    assert f"The rollout's release id: {release_id}, on every app server that got a new release" in out.out
    assert re.search(r"done\s+4\s+web1, web2, web3, lb1\n", out.out)
    # The next rollout makes a new one.
    _, again, _ = fake_rollout(monkeypatch, capsys, inventory)
    assert f"release_id={release_id}" not in again[0][2]


def test_a_named_release_id_is_used_everywhere(monkeypatch, capsys, inventory):
    named = "20261121T073000Z-3a98e1d"
    _, runs, _ = fake_rollout(monkeypatch, capsys, inventory, "--data", f"release_id={named}")
    assert all([value for value in extra if value.startswith("release_id=")] == [f"release_id={named}"]
               for _, _, extra in runs)


def test_a_failed_batch_stops_the_rollout(monkeypatch, capsys, inventory):
    code, runs, out = fake_rollout(monkeypatch, capsys, inventory, "--batch", "1", fail={"web2"})
    assert code == 1
    assert [label for label, _, _ in runs][-1] == "Batch 2 of 3"
    assert "Batch 2 of 3 failed on web2: stopping the rollout." in out.err
    assert re.search(r"done\s+1\s+web1\n", out.out) and re.search(r"failed\s+1\s+web2\n", out.out)
    assert re.search(r"untouched\s+2\s+web3, lb1\n", out.out)


def test_a_failed_preflight_changes_nothing(monkeypatch, capsys, inventory):
    code, runs, out = fake_rollout(monkeypatch, capsys, inventory, unreachable={"web3"})
    assert code == 2 and len(runs) == 1
    assert "Preflight failed: cannot reach or prepare web3. No host was changed." in out.err


def test_release_id_setting_names_the_bundle():
    from tasks.steps import bundle as release_bundle
    from tasks.config.checks import validate
    from tasks.config.settings import SettingsError

    source = REPO_ROOT / "files/greeting"
    args = (object(), source, ("instance/",), "requirements.txt", "loader\n", "/srv/greeting", str(source))
    named = release_bundle._bundle(*args, named="20261121T073000Z-3a98e1d")
    assert named.id == "20261121T073000Z-3a98e1d"
    assert named.content_hash == release_bundle._bundle(*args).content_hash  # the name is not part of the content
    # Without it, as before: the time, the source's commit, the run's id.
    commit = release_bundle._git_commit(source)
    assert re.match(RELEASE_ID_RE, release_bundle._bundle(*args).id)
    assert release_bundle._bundle(*args).id.endswith("-".join(part for part in ("", commit, release_bundle.identity.RUN_ID) if part))
    with pytest.raises(SettingsError, match=r"release_id = 'latest': must be a release id like"):
        validate({"release_id": "latest"})


def test_a_named_release_id_is_the_new_releases_name_and_never_replaces_the_live_one():
    from pyinfra.api.exceptions import DeployError

    from tests.roles import test_distros

    named = "20261121T073000Z-3a98e1d"
    run = test_distros.deploy({"debian12": test_distros.host_facts("debian12")}, release_id=named)["debian12"]
    [shipped] = [name for name in run.changed if name.startswith(f"Release activation | Ship release {named} ")]
    assert "--activate restart" in run.changed[shipped][-1]  # its unit is new: uWSGI starts on it
    live = test_distros.host_facts("debian12", LiveRelease={"id": named, "content_hash": "other code"})
    with pytest.raises(DeployError, match=rf"release_id = '{named}' is already live on host '@fake/debian12' "
                                          "with other code: name a new release; nothing was changed."):
        test_distros.deploy({"debian12": live}, release_id=named)
