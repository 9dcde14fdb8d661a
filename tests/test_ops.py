"""ops.py's command line and tasks/fleet.py's reading of inventories (no hosts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tasks.fleet import Fleet, FleetError, parse_data, read_inventory
from tests.conftest import REPO_ROOT


def inventory(tmp_path, text: str, group_data: dict[str, str] | None = None):
    path = tmp_path / "inventories" / "prod.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(text))
    for name, body in (group_data or {}).items():
        (path.parent / "group_data").mkdir(exist_ok=True)
        (path.parent / "group_data" / f"{name}.py").write_text(textwrap.dedent(body))
    return path


def test_groups_host_data_group_data_and_overrides_are_read_as_pyinfra_reads_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = inventory(tmp_path, """
        _ssh = {"ssh_user": "deploy"}
        app_servers = ([("web1", {"private_address": "10.0.0.11"}), "web2"], {**_ssh, "uwsgi_processes": 4})
        load_balancers = ["lb1"]
    """, {"all": "import os\nkeep_releases = 3\n", "load_balancers": "lb_method = 'least_conn'\n"})
    found = read_inventory(str(path), {"uwsgi_threads": 8})
    hosts = {host.name: host for host in found}
    assert list(hosts) == ["web1", "web2", "lb1"]
    assert hosts["web1"].data.private_address == "10.0.0.11" and hosts["web2"].data.uwsgi_processes == 4
    assert hosts["lb1"].data.lb_method == "least_conn" and hosts["lb1"].data.keep_releases == 3
    assert all(host.data.uwsgi_threads == 8 for host in found)
    assert "os" not in hosts["web1"].data.dict()
    assert {host.name for host in found.get_group("prod")} == {"web1", "web2", "lb1"}


def test_data_values_are_parsed_like_pyinfras():
    assert parse_data(["a=true", "b=8", 'c=["x"]', "d=text", "e="]) == {
        "a": True, "b": 8, "c": ["x"], "d": "text", "e": ""}
    with pytest.raises(FleetError, match="--data 'nokey': must be KEY=VALUE"):
        parse_data(["nokey"])


def test_limit_and_settings_are_checked_before_any_host_is_connected_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Unreachable names: any attempt to connect would fail differently.
    path = inventory(tmp_path, 'hosts = [("web1.invalid", {"app_root": "/"}), "web2.invalid"]\n')
    with pytest.raises(FleetError, match="--limit db\\*: matches no host"):
        Fleet.connect(str(path), ("db*",))
    with pytest.raises(Exception, match="app_root = '/'"):
        Fleet.connect(str(path), ("web1.invalid",))
    with pytest.raises(FleetError, match="--app shop: no host of .* runs such an app"):
        Fleet.connect(str(path), ("web2.invalid",), app_name="shop")


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path):
    path = inventory(tmp_path, 'hosts = [("web1.invalid", {"app_root": "/"})]\n')
    for args, line in ([["releases"], "app_root = '/'"],
                       [["--limit", "x", "releases"], "--limit x: matches no host"],
                       [["releases", "--limit=x"], "--limit x: matches no host"]):
        done = subprocess.run([sys.executable, "ops.py", str(path), *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 2 and line in done.stderr and "Traceback" not in done.stderr, done.stderr
