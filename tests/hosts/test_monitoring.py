"""Prometheus on a `monitoring_servers` host, on real hosts (marker `features`;
tasks/roles/monitoring_server.py, tasks/steps/metrics.py, tasks/steps/monitoring.py,
docs/monitoring.md). Without a host: tests/steps/test_monitoring.py.

Two forks of the shared deployed host on a Docker network of the test's own: an app
server (its app given its own Redis) and the monitoring host (both with NET_ADMIN: the
deploy loads their exporters' firewall), and a bare outsider. The webhook receiver runs in the test process, reached
through the network's gateway. Short intervals come from the settings
(`monitoring_interval` 2 s, `monitoring_alert_after` 0 s), the shipped defaults stay.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import requests

from dev import throwaway
from tests.conftest import get, run_deploy
from tests.hosts.test_database_servers import connects
from tests.roles.test_monitoring_server import rules_unit_tests
from tests.steps.test_watch import Receiver

pytestmark = pytest.mark.features

TOKEN = "T0KEN-monitoring-5ecret"


def throwaway_tag() -> str:
    import os

    return os.environ.get("THROWAWAY_APT_ARCHIVES_TAG", "")


def api(mon: throwaway.Host, path: str) -> dict:
    """Prometheus's API on the monitoring host, read there with its python3 (the relay's; a
    bare monitoring host has no curl)."""
    url = f"http://127.0.0.1:9090/api/v1/{path}"
    return json.loads(mon.exec(f"python3 -c 'import sys, urllib.request; "
                               f"sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' '{url}'"))["data"]


def targets_up(mon: throwaway.Host, seconds: float = 40) -> list[tuple[str, str]]:
    """(job, instance) of every target, once Prometheus has them all up; what it says of each
    when that does not come within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        targets = api(mon, "targets")["activeTargets"]
        if targets and all(target["health"] == "up" for target in targets):
            return sorted((target["labels"]["job"], target["labels"]["instance"]) for target in targets)
        assert time.monotonic() < deadline, [(target["scrapeUrl"], target["health"], target["lastError"])
                                             for target in targets]
        time.sleep(1)


def requests_served(mon: throwaway.Host) -> float | None:
    found = api(mon, "query?query=pyinfra_flask_uwsgi_requests_total%7Bapp%3D%22greeting%22%7D")["result"]
    return float(found[0]["value"][1]) if found else None


def rules_unit_tests_on(mon: throwaway.Host, tmp_path: Path) -> str:
    """Prometheus's unit tests of every shipped rule (tests/roles/prometheus-rules-test.yml: each
    fires after its `for:` and resolves), run by the monitoring host's own promtool; its output."""
    tests = rules_unit_tests(tmp_path)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in (tests, tests.with_name("pyinfra-flask-rules.yml")):
            tar.add(path, arcname=f"rules-tests/{path.name}")
    # Into root's home: Debian 13 mounts a tmpfs on /tmp, over what Docker would write there.
    mon.container.put_archive("/root", archive.getvalue())
    return mon.exec(f"cd /root/rules-tests && promtool test rules {tests.name} && rm -r /root/rules-tests")


def wait(what: str, seconds: float, probe):
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(1)


def app_and_monitor(hosts, image: str, *others: str
                    ) -> tuple[str, str, Receiver, throwaway.Host, throwaway.Host, list[throwaway.Host]]:
    """(network, its gateway, a webhook receiver behind it, an app server, a monitoring host, a
    host of each of `others`' images): a Docker network of the test's own, the receiver in the
    test process, two hosts of `image` on the network with NET_ADMIN (the deploy loads their
    exporters' firewall), all booted side by side."""
    network = hosts.network()
    gateway = throwaway.docker_client().networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]
    receiver = Receiver(("0.0.0.0", 0))
    admin = {"network": network, "cap_add": ("NET_ADMIN",)}
    # Each host its own apt archives: both install packages at once, and apt locks the directory.
    app, mon, *rest = hosts.start_many((image, admin),
                                       (image, {**admin, "apt_archives_tag": f"{throwaway_tag()}-monitoring"}),
                                       *[(other, {"network": network}) for other in others])
    return network, gateway, receiver, app, mon, rest


def test_every_target_up_counters_move_alerts_reach_the_webhook_and_only_the_monitor_scrapes(
        hosts, deployed_image, bookworm_image, tmp_path):
    started = time.monotonic()
    network, gateway, receiver, app, mon, [outsider] = app_and_monitor(hosts, deployed_image, bookworm_image)
    app_address, mon_address = app.address(network), mon.address(network)
    inventory = throwaway.write_group_inventory(tmp_path / "inventory.py", {
        "app_servers": [(app, {"private_address": app_address, "redis": True})],
        "monitoring_servers": [(mon, {"private_address": mon_address, "monitoring_interval": 2,
                                      "monitoring_alert_after": 0,
                                      "alert_webhook_url": f"http://{gateway}:{receiver.server_address[1]}/{TOKEN}"})]})
    try:
        first = run_deploy(inventory, tmp_path)
        print(f"\nfirst deploy (app server and monitoring host): {first.seconds:.1f}s")
        # Every target the inventory implies, each up.
        assert targets_up(mon) == sorted([
            ("mtail", app.name), ("nginx", app.name), ("node", app.name), ("node", mon.name), ("redis", app.name)])
        # The app's Redis exporter got in with the app's password, which only it holds: a user
        # of its own, the password in its environment (not its command line), unreadable to the app.
        assert wait("redis_up", 20, lambda: api(mon, "query?query=redis_connected_clients")["result"])
        pid = app.exec("systemctl show -p MainPID --value pyinfra-flask-redis-exporter@greeting").strip()
        password = app.exec("cat /etc/pyinfra-flask/redis/greeting.password").strip()
        assert app.exec(f"stat -c %U /proc/{pid}").strip() not in ("root", "greeting", "prometheus")
        assert password not in app.exec(f"cat /proc/{pid}/cmdline")
        assert "Permission denied" in app.exec(f"runuser -u greeting -- cat /proc/{pid}/environ", check=False)
        # The app's uWSGI request counter moves under a few dozen requests.
        before = wait("the app's request counter", 20, lambda: requests_served(mon) is not None) and requests_served(mon)
        for _ in range(30):
            get(app.url + "/").raise_for_status()
        wait("30 more requests counted", 20, lambda: (requests_served(mon) or 0) >= before + 30)
        # The shipped rules pass promtool on the host, and Prometheus's own unit tests there: every
        # rule fires after its `for:` and resolves.
        assert "SUCCESS" in mon.exec("promtool check rules /etc/prometheus/pyinfra-flask-rules.yml")
        assert "SUCCESS" in rules_unit_tests_on(mon, tmp_path)
        # Exporters answer the monitoring host only, and only on the private address.
        assert all(connects(mon, app_address, port) for port in (9100, 9113, 9122, 3903))
        for port in (9100, 9113, 9122, 3903):
            assert not connects(outsider, app_address, port), port
        assert not connects(app, mon_address, 9100)
        assert not connects(outsider, mon_address, 9090) and not connects(outsider, mon_address, 9093)
        second = run_deploy(inventory, tmp_path)
        assert second.changed_operations() == [], second.changed_operations()
        for run in (first, second):
            assert TOKEN not in run.output and password not in run.output
        assert mon.exec("stat -c '%U %a' /etc/pyinfra-flask/monitoring/targets.json").split() == ["root", "600"]
        # The app stopped: AppDown reaches the webhook, with a `text`.
        app.exec("systemctl stop greeting")
        stopped = time.monotonic()
        wait("an AppDown alert", 60, lambda: any(b"AppDown" in body for _, _, body in receiver.received))
        print(f"AppDown alert {time.monotonic() - stopped:.1f}s after the app stopped")
        # nginx's 502s while it is down, counted by mtail from the access log.
        for _ in range(5):
            assert requests.get(app.url + "/", timeout=10).status_code == 502
        wait("5xx answers counted", 20, lambda: float((api(mon, "query?query=pyinfra_flask_nginx_5xx_total")["result"]
                                                       or [{"value": [0, "0"]}])[0]["value"][1]) >= 5)
        payload = json.loads(next(body for _, _, body in receiver.received if b"AppDown" in body))
        assert payload["text"].startswith(f"[{mon.name}] FAILING: AppDown: {app.name}: greeting's health check fails")
        assert receiver.received[0][0] == f"/{TOKEN}"
        # Started again: Alertmanager sends the resolved alert (send_resolved), the relay a RECOVERED.
        app.exec("systemctl start greeting")
        started_again = time.monotonic()
        recovered = wait("the AppDown recovery", 60, lambda: [
            text for text in (json.loads(body)["text"] for _, _, body in receiver.received)
            if text.startswith(f"[{mon.name}] RECOVERED: AppDown: {app.name}")])
        print(f"AppDown recovery {time.monotonic() - started_again:.1f}s after the app started: {recovered[0]!r}")
        assert len([body for _, _, body in receiver.received if b"AppDown" in body]) == 2
    except BaseException:
        print(mon.exec("journalctl --no-pager -n 40 -u prometheus -u prometheus-alertmanager "
                       "-u pyinfra-flask-alert-relay", check=False))
        print(app.exec("journalctl --no-pager -n 20 -u pyinfra-flask-metrics -u prometheus-node-exporter "
                       "-u prometheus-nginx-exporter; nft list ruleset", check=False))
        raise
    finally:
        receiver.shutdown()
        for h in (app, mon, outsider):
            hosts.remove(h)
    print(f"test_monitoring on real hosts: {time.monotonic() - started:.1f}s")
