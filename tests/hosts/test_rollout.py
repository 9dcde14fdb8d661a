"""Rollouts across app servers behind an nginx load balancer, on a Docker network
the tests create: one balancer, three app servers."""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dev import throwaway
from tests.conftest import Load, app_variant, get, run_deploy
from tasks.config.settings import RELEASE_ID_RE
from tests.hosts.test_canary import BROKEN, SHARE, Clients, promoted, rolled_back
from tests.hosts.test_deploy import GREETING

pytestmark = pytest.mark.rollout

ROOT = "/srv/greeting"


@dataclass
class Cluster:
    balancer: throwaway.Host
    apps: list[throwaway.Host]
    network: str
    workdir: Path

    def inventory(self, apps=None, extra: dict | None = None, ghosts: dict | None = None,
                  ghost_balancers: dict | None = None, balancer_address: bool = True,
                  every: dict | None = None) -> Path:
        """An inventory of the cluster; `extra` adds host data per app server name,
        `ghosts` adds app servers that do not exist, `ghost_balancers` balancers, `every`
        data to every host."""
        members = [(app, {"private_address": app.address(self.network), **(every or {}),
                          **(extra or {}).get(app.name, {})})
                   for app in (apps or self.apps)]
        balancer = {"private_address": self.balancer.address(self.network)} if balancer_address else {}
        balancer.update(every or {})
        path = throwaway.write_group_inventory(
            self.workdir / f"inventory_{len(list(self.workdir.iterdir()))}.py",
            {"app_servers": members, "load_balancers": [(self.balancer, balancer)]},
        )
        for group, extra_hosts in (("app_servers", ghosts), ("load_balancers", ghost_balancers)):
            if extra_hosts:
                text = path.read_text()
                path.write_text(text.replace(f"{group} = [", f"{group} = [" + "".join(
                    f"({name!r}, {data!r}), " for name, data in extra_hosts.items()), 1))
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
    # NET_ADMIN: the deploy manages the app servers' firewall (nftables).
    balancer, *apps = hosts.start_many((bookworm_image, {"network": network}),
                                       *[(deployed_image, {"network": network, "cap_add": ("NET_ADMIN",)})] * 3)
    # The throwaway hosts share one apt archive directory, and with it apt's lock: the
    # package the app servers now need (nftables; tests/roles/test_distros.py shows the
    # deploy asks for it) is put in one host at a time, so the balancer's nginx
    # install is the run's only apt download, as before.
    for app in apps:
        app.exec("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables")
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


def reaches_uwsgi(client: throwaway.Host, server: throwaway.Host, network: str, port: int = 3031) -> bool:
    """Whether `client` can open a TCP connection to `server`'s uWSGI port (3 s at most:
    the firewall drops, so a refused connection would be a different answer)."""
    address = server.address(network)
    return client.exec(f"timeout 3 bash -c '</dev/tcp/{address}/{port}' && echo open || echo closed").strip() == "open"


def test_only_the_balancers_reach_uwsgi(cluster):
    """A host on the same network that is not a balancer (here another app server)
    cannot connect to uWSGI's TCP socket; the balancer can, and serves through it."""
    target, outsider, rebooted = cluster.apps
    assert not reaches_uwsgi(outsider, target, cluster.network)
    assert not reaches_uwsgi(target, outsider, cluster.network)
    assert reaches_uwsgi(cluster.balancer, target, cluster.network)
    # Only uWSGI's port is filtered: everything else passes (sshd here).
    assert reaches_uwsgi(outsider, target, cluster.network, port=22)
    served_by = {get(cluster.balancer.url + "/info").json()["host"] for _ in range(30)}
    assert served_by == {app.name for app in cluster.apps}
    rules = target.exec("nft list table inet pyinfra_flask")
    assert f"ip saddr {cluster.balancer.address(cluster.network)} accept" in rules
    # nftables.service's own ruleset (Debian's /etc/nftables.conf begins with `flush
    # ruleset`) is left as it was, and (re)starting it does not take our table away.
    assert "pyinfra" not in target.exec("cat /etc/nftables.conf")
    for action in ("restart", "reload", "stop"):
        target.exec(f"systemctl {action} nftables.service")
        assert not reaches_uwsgi(outsider, target, cluster.network), f"open after nftables.service {action}"
    # After a reboot the table is back before anything connects, and uWSGI serves the balancer again.
    address = rebooted.address(cluster.network)
    rebooted.restart()
    assert rebooted.address(cluster.network) == address, "the reboot moved the host"
    assert rebooted.exec("systemctl is-active pyinfra-flask-firewall.service").strip() == "active"
    assert not reaches_uwsgi(outsider, rebooted, cluster.network)
    assert reaches_uwsgi(cluster.balancer, rebooted, cluster.network)
    # The balancer may have rested it while it was down (lb_fail_timeout).
    deadline = time.monotonic() + 30
    while rebooted.name not in {get(cluster.balancer.url + "/info").json()["host"] for _ in range(10)}:
        assert time.monotonic() < deadline, f"{rebooted.name} is not served through the balancer after its reboot"
        time.sleep(1)


def test_firewall_follows_the_balancers(cluster):
    """A balancer added to the inventory is let in, one removed is shut out again,
    and a run that changes nothing changes nothing."""
    ghost = {"ghost-lb": {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_user": "root",
                          "ssh_connect_retries": 0, "private_address": "192.0.2.7"}}
    # Only the app servers are deployed: the new balancer is not up yet.
    added = run_deploy(cluster.inventory(ghost_balancers=ghost), cluster.workdir, "--limit", "app_servers")
    for app in cluster.apps:
        rules = app.exec("nft list table inet pyinfra_flask")
        assert "ip saddr 192.0.2.7 accept" in rules
        assert f"ip saddr {cluster.balancer.address(cluster.network)} accept" in rules
    assert "App server | Firewall | Load the changed uWSGI firewall rules (nft -c first)" in added.changed_operations()
    assert {get(cluster.balancer.url + "/").status_code for _ in range(6)} == {200}
    removed = run_deploy(cluster.inventory(), cluster.workdir)
    assert "App server | Firewall | Load the changed uWSGI firewall rules (nft -c first)" in removed.changed_operations()
    for app in cluster.apps:
        assert "192.0.2.7" not in app.exec("nft list table inet pyinfra_flask")
    again = run_deploy(cluster.inventory(), cluster.workdir)
    assert again.changed_operations() == [], again.output[-3000:]
    assert {get(cluster.balancer.url + "/").status_code for _ in range(6)} == {200}


def test_balancer_without_private_address_stops_the_run_before_any_change(cluster):
    before = {app.name: app.exec("nft list table inet pyinfra_flask") for app in cluster.apps}
    run = run_deploy(cluster.inventory(balancer_address=False), cluster.workdir, check=False)
    assert run.returncode != 0
    assert (f"Balancer {cluster.balancer.name!r} has no private_address: set it to the address the app servers "
            "see its connections come from (only the balancers may reach their uWSGI); nothing was changed."
            ) in run.output
    assert "Traceback" not in run.output and "--> Beginning operation run" not in run.output
    assert {app.name: app.exec("nft list table inet pyinfra_flask") for app in cluster.apps} == before


def test_balancer_check_is_not_answered_by_another_site(cluster):
    """The balancer's health check reaches its own site: with every app server down
    and other vhosts on the balancer answering 200 for `localhost` and on 127.0.0.1,
    the deploy of the balancer fails instead of passing on their answer."""
    lb = cluster.balancer
    other = ('server { listen 80; server_name localhost; location / { return 200 "other"; } }\n'
             'server { listen 127.0.0.1:80; server_name loopback.test; location / { return 200 "loopback"; } }')
    lb.exec(f"echo {shlex.quote(other)} > /etc/nginx/sites-enabled/other.conf && nginx -t && systemctl reload nginx")
    for app in cluster.apps:
        app.exec("systemctl stop greeting.service")
    try:
        status = "curl -s -o /dev/null -w '%{http_code}' -H 'Host: localhost' http://127.0.0.1/"
        # What the old check asked (and got, once nginx's new workers are up).
        deadline = time.monotonic() + 5
        while lb.exec(status).strip() != "200":
            assert time.monotonic() < deadline, "the other vhost does not answer"
            time.sleep(0.1)
        assert get(lb.url + "/").status_code == 502
        run = run_deploy(cluster.inventory(), cluster.workdir, "--limit", "load_balancers",
                         data={"healthcheck_retries": 2}, check=False)
        assert run.returncode != 0, run.output[-3000:]
        assert f"HEALTH CHECK FAILED on balancer {lb.name}: health check GET http://127.0.0.2:80/" in run.output
        assert "through nginx answered 502, expected 200" in run.output
    finally:
        lb.exec("rm -f /etc/nginx/sites-enabled/other.conf && systemctl reload nginx")
        for app in cluster.apps:
            app.exec("systemctl start greeting.service")
    # The balancer rests the servers it saw fail for lb_fail_timeout.
    deadline = time.monotonic() + 30
    while {get(lb.url + "/").status_code for _ in range(6)} != {200}:
        assert time.monotonic() < deadline, "the balancer does not serve again"
        time.sleep(1)


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
    # One release id for the whole rollout: every app server's new release has that name.
    release_id = re.search(r"Rolling out release (\S+) to 3 app server", run.output).group(1)
    assert re.match(RELEASE_ID_RE, release_id)
    assert {name: Path(current).name for name, current in cluster.releases().items()} == {
        app.name: release_id for app in cluster.apps}
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


def test_a_canary_behind_the_balancer_rolls_back_a_failing_release_and_promotes_a_good_one(cluster, tmp_path):
    """The canary of tests/hosts/test_canary.py behind a balancer, over the two app servers
    left by the test above: the balancer splits new clients between every app server's
    live and canary instances, the app servers promote or roll back by its counts."""
    kept = cluster.apps[:2]
    inventory = cluster.inventory(apps=kept, every={"canary_share": SHARE, "canary_window": 8,
                                                    "canary_min_requests": 50, "canary_max_error_rate": 1.0,
                                                    "keep_releases": 1})
    tool = f"{ROOT}/bin/release-tool"
    # The split on the balancer, the canary's ini and port on the app servers; the code is the live one's.
    run_deploy(inventory, tmp_path, data={"app_source": "files/greeting"})
    old = {app.name: json.loads(app.exec(f"{tool} list --json"))["live"] for app in kept}
    kept_releases = {app.name: app.exec(f"ls -A {ROOT}/releases") for app in kept}
    answer = get(cluster.balancer.url + "/")
    assert answer.text.strip() == GREETING and "Set-Cookie" not in answer.headers

    # 1. A release whose /broken answers 500: rolled back by its canary on every app server.
    bad = app_variant(tmp_path, "Hello from the bad canary", append=BROKEN)
    with Clients(cluster.balancer.url, later=("/broken", "/")) as load:
        run = run_deploy(inventory, tmp_path, data={"app_source": str(bad)}, check=False)
    assert run.returncode != 0 and "ROLLED BACK by its canary" in run.output, run.output[-4000:]
    for app in kept:
        assert json.loads(app.exec(f"{tool} list --json"))["live"] == old[app.name]
        assert app.exec(f"ls -A {ROOT}/releases") == kept_releases[app.name], "the rolled back release is removed"
        assert app.exec("systemctl is-active greeting-canary.service || true").strip() != "active"
    entries = [json.loads(app.exec(f"tail -n 1 {ROOT}/audit.jsonl")) for app in kept]
    assert all(e["result"] == "rolled-back" and e["canary"]["verdict"] == "rolled-back" for e in entries), entries
    entry = entries[0]
    # Every app server judged the same numbers: the balancer's.
    assert all(e["canary"]["canary"] == entry["canary"]["canary"] for e in entries), entries
    assert entry["canary"]["canary"]["5xx"] > 0 and entry["canary"]["live"]["5xx"] == 0, entry
    assert entry["canary"]["balancers"] == [cluster.balancer.name]
    bad_window, bad_canary = rolled_back(load, entry, "Hello from the bad canary", "behind the balancer, bad release")
    assert cluster.balancer.exec("ls /etc/pyinfra-flask/canary/greeting").strip() == ""

    # 2. A good release: promoted everywhere, nobody fails; the canary's clients stay on it.
    good = app_variant(tmp_path, "Hello from the good canary")
    with Clients(cluster.balancer.url, later=("/",)) as load:
        run_deploy(inventory, tmp_path, data={"app_source": str(good)})
    entries = [json.loads(app.exec(f"tail -n 1 {ROOT}/audit.jsonl")) for app in kept]
    assert all(e["result"] == "ok" and e["canary"]["verdict"] == "promoted" for e in entries), entries
    for app in kept:
        live = json.loads(app.exec(f"{tool} list --json"))["live"]
        assert live != old[app.name]
        # Pruned once the promoted release was live (keep_releases = 1), not before.
        assert app.exec(f"ls -A {ROOT}/releases").split() == [live]
    entry = entries[0]
    promoted(load, entry, "Hello from the good canary", "behind the balancer, good release", bad_window, bad_canary)
    assert {get(cluster.balancer.url + "/").text.strip() for _ in range(6)} == {"Hello from the good canary"}
    for app in kept:
        assert app.exec("systemctl is-active greeting-canary.service || true").strip() != "active"
    assert cluster.balancer.exec("ls /etc/pyinfra-flask/canary/greeting").strip() == ""

    # 3. A second run after the finished canary changes nothing.
    second = run_deploy(inventory, tmp_path, data={"app_source": str(good)})
    assert second.changed_operations() == [], second.changed_operations()

    # 4. Without the balancer in the run there is nobody to split: refused before any change.
    other = app_variant(tmp_path, "Hello from a limited run")
    kept_releases = {app.name: app.exec(f"ls -A {ROOT}/releases") for app in kept}
    limited = run_deploy(inventory, tmp_path, "--limit", "app_servers", data={"app_source": str(other)},
                         check=False)
    assert limited.returncode != 0
    assert f"but {cluster.balancer.name} is not in this run" in limited.output, limited.output[-3000:]
    assert {app.name: app.exec(f"ls -A {ROOT}/releases") for app in kept} == kept_releases
    assert {get(cluster.balancer.url + "/").text.strip() for _ in range(4)} == {"Hello from the good canary"}

    # 5. A deploy cut off during a canary leaves the balancer's flag: the next one takes it down.
    cluster.balancer.exec("echo leftover > /etc/pyinfra-flask/canary/greeting/on")
    cleared = run_deploy(inventory, tmp_path, data={"app_source": str(good)})
    changed = cleared.changed_operations()
    assert len(changed) == 1 and changed[0].endswith("No canary flag left by an interrupted deploy"), changed
    assert cluster.balancer.exec("ls /etc/pyinfra-flask/canary/greeting").strip() == ""

    # 6. The canary's port is the balancers' alone, as uWSGI's: with a listener on it (as the
    # canary instance during a window), another host of the network cannot connect.
    target, outsider = kept
    port = 3031 + 1000
    target.exec(f"setsid python3 -m http.server {port} --bind {target.address(cluster.network)} "
                ">/dev/null 2>&1 & echo $! > /run/stand-in-canary.pid")
    try:
        deadline = time.monotonic() + 10
        while not reaches_uwsgi(cluster.balancer, target, cluster.network, port=port):
            assert time.monotonic() < deadline, "the stand-in canary never listened"
            time.sleep(0.2)
        assert not reaches_uwsgi(outsider, target, cluster.network, port=port)
    finally:
        target.exec("kill $(cat /run/stand-in-canary.pid) || true")
