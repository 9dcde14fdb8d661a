"""Rollouts across app servers behind an nginx load balancer, on a Docker network
the tests create: one balancer, three app servers."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dev import throwaway
from tests.conftest import Load, app_variant, get, run_deploy
from tests.test_deploy import GREETING

pytestmark = pytest.mark.rollout

ROOT = "/srv/greeting"


@dataclass
class Cluster:
    balancer: throwaway.Host
    apps: list[throwaway.Host]
    network: str
    workdir: Path

    def inventory(self, apps=None, extra: dict | None = None, ghosts: dict | None = None) -> Path:
        """An inventory of the cluster; `extra` adds host data per app server name,
        `ghosts` adds app servers that do not exist."""
        members = [(app, {"private_address": app.address(self.network), **(extra or {}).get(app.name, {})})
                   for app in (apps or self.apps)]
        path = throwaway.write_group_inventory(
            self.workdir / f"inventory_{len(list(self.workdir.iterdir()))}.py",
            {"app_servers": members, "load_balancers": [(self.balancer, {})]},
        )
        if ghosts:
            text = path.read_text()
            path.write_text(text.replace("app_servers = [", "app_servers = [" + "".join(
                f"({name!r}, {data!r}), " for name, data in ghosts.items()), 1))
        return path

    def releases(self) -> dict[str, str]:
        return {app.name: app.exec(f"readlink {ROOT}/current").strip() for app in self.apps}


def rollout(inventory: Path, *args: str) -> throwaway.DeployRun:
    run = throwaway.run_command([sys.executable, "rollout.py", str(inventory), *args], timeout=1200)
    print(run.output[-1500:])
    return run


@pytest.fixture(scope="module")
def cluster(hosts, deployed_image, bookworm_image, tmp_path_factory) -> Cluster:
    network = hosts.network()
    balancer = hosts.start(bookworm_image, network=network)
    apps = [hosts.start(deployed_image, network=network) for _ in range(3)]
    found = Cluster(balancer, apps, network, tmp_path_factory.mktemp("cluster"))
    # The app servers switch from their own nginx and unix socket to TCP behind the
    # balancer, the balancer gets nginx: one pyinfra run for all four, in parallel.
    run = run_deploy(found.inventory(), found.workdir)
    print(f"\ncluster deploy: {run.seconds:.1f}s")
    return found


def test_every_app_server_answers_through_the_balancer(cluster):
    served_by = {get(cluster.balancer.url + "/info").json()["host"] for _ in range(30)}
    assert served_by == {app.name for app in cluster.apps}
    assert get(cluster.balancer.url + "/").text.strip() == GREETING
    assert get(cluster.balancer.url + "/static/style.css").status_code == 200
    site = cluster.balancer.exec("cat /etc/nginx/sites-available/greeting.conf")
    for app in cluster.apps:
        assert f"server {app.address(cluster.network)}:3031 max_fails=3 fail_timeout=10s;  # {app.name}" in site
    assert re.search(r"^\s*uwsgi_pass greeting_app_servers;", site, re.M)
    for app in cluster.apps:
        ini = app.exec(f"cat {ROOT}/uwsgi.ini")
        assert f"socket = {app.address(cluster.network)}:3031" in ini
        # Its own nginx site is gone: the balancer is the only way in.
        assert app.exec("ls /etc/nginx/sites-enabled/ /etc/nginx/sites-available/", check=False).count("greeting") == 0


def test_rolling_code_change_under_load_drops_nothing(cluster, tmp_path):
    new_app = app_variant(tmp_path, greeting="Hello from the rollout!")
    with Load(cluster.balancer.url + "/") as load:
        run = rollout(cluster.inventory(), "--batch", "1", "--data", f"app_source={new_app}")
    print(load.report("rolling deploy through the balancer"))
    assert run.returncode == 0, run.output[-4000:]
    assert load.failures == [] and load.sent > 100
    assert re.search(r"done\s+4\s", run.output) and re.search(r"failed\s+0\s", run.output)
    for batch in range(1, 4):
        assert f"=== Batch {batch} of 3" in run.output
    for _ in range(6):
        assert get(cluster.balancer.url + "/").text.strip() == "Hello from the rollout!"


def test_failing_host_stops_the_rollout(cluster, tmp_path):
    first, failing, last = cluster.apps
    before = cluster.releases()
    good = str(app_variant(tmp_path, greeting="Hello from a half rollout"))
    # The same change, except that on one host the new release answers 500.
    bad = str(app_variant(tmp_path, greeting="broken here",
                          append='\n@app.before_request\ndef broken():\n    return "boom", 500\n'))
    sources = {first.name: {"app_source": good}, failing.name: {"app_source": bad}, last.name: {"app_source": good}}
    with Load(cluster.balancer.url + "/") as load:
        run = rollout(cluster.inventory(extra=sources), "--batch", "1")
    print(load.report("rollout stopped by a failing host"))
    assert run.returncode == 1
    assert f"Batch 2 of 3 failed on {failing.name}: stopping the rollout" in run.output
    # Its new release answered 500 to the check before the switch: it never took traffic.
    assert "answered 500, expected 200" in run.output and "failed its check before the switch" in run.output
    assert re.search(rf"done\s+1\s+{first.name}\n", run.output)
    assert re.search(rf"failed\s+1\s+{failing.name}\n", run.output)
    assert re.search(rf"untouched\s+2\s+{last.name}, {cluster.balancer.name}\n", run.output)
    after = cluster.releases()
    assert after[first.name] != before[first.name]
    assert after[failing.name] == before[failing.name], "still on its previous release"
    assert after[last.name] == before[last.name], "never touched"
    # The balancer kept serving throughout, from the healthy hosts.
    assert load.failures == []
    assert {get(cluster.balancer.url + "/").status_code for _ in range(10)} == {200}


def test_unreachable_host_stops_the_rollout_before_any_change(cluster, tmp_path):
    before = cluster.releases()
    ghost = {"ghost": {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_user": "root",
                       "ssh_connect_retries": 0, "private_address": "192.0.2.1"}}
    new_app = app_variant(tmp_path, greeting="never deployed")
    run = rollout(cluster.inventory(ghosts=ghost), "--data", f"app_source={new_app}")
    assert run.returncode == 2
    assert re.search(r"\[ghost\]\s+Could not connect", run.output)
    assert "Preflight failed: cannot reach or prepare ghost. No host was changed." in run.output
    assert cluster.releases() == before


def test_removing_an_app_server_updates_the_balancer(cluster):
    kept = cluster.apps[:2]
    run_deploy(cluster.inventory(apps=kept), cluster.workdir, data={"app_source": "files/greeting"})
    site = cluster.balancer.exec("cat /etc/nginx/sites-available/greeting.conf")
    assert cluster.apps[2].address(cluster.network) not in site
    served_by = {get(cluster.balancer.url + "/info").json()["host"] for _ in range(20)}
    assert served_by == {app.name for app in kept}
