"""The watch and its alerts on a real host (marker `features`; tasks/steps/watch.py,
files/watch.py, docs/watch.md). Without a host: tests/steps/test_watch.py.

One fork of the shared deployed host, on a Docker network the test creates; the
webhook receiver runs in the test process and the host reaches it through the
network's gateway. The watch runs every 10 s here (`watch_interval`; 60 s by
default). The receiver gets: one alert for a certificate near its end (made for the
test, 3 days left) at the deploy's first run of the watch; one when the app is
stopped, none more while it stays down (at least 3 runs), one when it is started
again; the same for a worker killed until systemd gives up; one when the certificate
is replaced. A second deploy changes nothing; the webhook's token is in no output
and only in a root-only file; a stopped watch shows in `ops.py status`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, run_deploy
from tests.hosts.test_features import _self_signed
from tests.steps.test_watch import Receiver

pytestmark = pytest.mark.features

INTERVAL = 10
TOKEN = "T0KEN-watch-5ecret"
WORKER = "greeting-sleeper@1.service"


@pytest.fixture(scope="module")
def lab(hosts, deployed_image, tmp_path_factory):
    from dev import throwaway

    network = hosts.network()
    gateway = throwaway.docker_client().networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]
    receiver = Receiver(("0.0.0.0", 0))
    host = hosts.start(deployed_image, network=network)
    work = tmp_path_factory.mktemp("watch")
    cert, key = _self_signed(work, "watch.test", days=3)
    data = {"watch_interval": INTERVAL, "alert_webhook_url": f"http://{gateway}:{receiver.server_address[1]}/{TOKEN}",
            "workers": {"sleeper": {"command": "python -c 'import time; time.sleep(10**6)'"}},
            "nginx_server_names": ["watch.test"], "tls_certificate": str(cert), "tls_certificate_key": str(key),
            "tls_redirect_http": False}
    inventory = host.write_inventory(work / "inventory.py", data)
    try:
        yield host, inventory, receiver, work
    finally:
        receiver.shutdown()
        hosts.remove(host)


def alerts(receiver) -> list[dict]:
    """Each alert's details, with its `text` (what Slack and Mattermost show)."""
    return [{**payload["alert"], "text": payload["text"]}
            for payload in (json.loads(body) for _, _, body in receiver.received)]


def wait_for(receiver, count: int, seconds: float) -> float:
    """Seconds until the receiver holds `count` alerts (fails after `seconds`)."""
    started = time.monotonic()
    while len(receiver.received) < count:
        assert time.monotonic() - started < seconds, f"no alert {count} in {seconds} s: {alerts(receiver)}"
        time.sleep(0.5)
    return time.monotonic() - started


def checks(alert: dict, kind: str) -> list[str]:
    return [item["check"] for item in alert[kind]]


def test_one_alert_per_change_and_one_per_recovery(lab):
    host, inventory, receiver, work = lab
    first = run_deploy(inventory, work)
    # The deploy's own first run of the watch: the short certificate is already failing.
    wait_for(receiver, 1, 30)
    [cert] = alerts(receiver)
    assert checks(cert, "failing") == ["certificate:/etc/nginx/tls/greeting.crt"], cert
    assert "ends within 14 days" in cert["text"] and cert["host"] == host.name
    assert receiver.received[0][0] == f"/{TOKEN}"
    assert host.exec("stat -c '%U %a' /etc/pyinfra-flask/watch/targets.json").strip() == "root 600"
    assert host.exec("systemctl show -p ActiveState --value pyinfra-flask-watch.timer").strip() == "active"

    again = run_deploy(inventory, work)
    assert again.changed_operations() == [], again.output[-3000:]
    # A new webhook previewed: said to change, its value (old or new) never shown.
    receiver_url = json.loads(host.exec("cat /etc/pyinfra-flask/watch/targets.json"))["webhook"]
    dry = run_deploy(inventory, work, "--dry", "--diff", data={"alert_webhook_url": receiver_url + "-NEW"})
    assert "Will write /etc/pyinfra-flask/watch/targets.json (a secret: contents not shown)" in dry.output
    for run in (first, again, dry):
        assert TOKEN not in run.output
    assert json.loads(host.exec("cat /etc/pyinfra-flask/watch/targets.json"))["webhook"] == receiver_url

    # The app stopped: one alert within 2 minutes, none more while it stays down.
    host.exec("systemctl stop greeting.service")
    took = wait_for(receiver, 2, 120)
    down = alerts(receiver)[1]
    assert set(checks(down, "failing")) == {"greeting:health", "unit:greeting.service"}, down
    print(f"\napp stopped: alerted after {took:.1f} s")
    # A worker killed until systemd stops restarting it: one alert of its own. The worker
    # units restart after 2 s, which systemd's default limit (5 starts in 10 s) may never
    # stop; a test-only drop-in makes it give up after 3 starts in a minute.
    host.exec("mkdir -p /etc/systemd/system/greeting-sleeper@.service.d && printf '[Unit]\\nStartLimitIntervalSec=60\\n"
              "StartLimitBurst=3\\n' > /etc/systemd/system/greeting-sleeper@.service.d/test-give-up.conf "
              "&& systemctl daemon-reload")
    deadline = time.monotonic() + 60
    while host.exec(f"systemctl show -p ActiveState --value {WORKER}").strip() != "failed":
        assert time.monotonic() < deadline, "systemd kept restarting the worker"
        host.exec(f"systemctl kill -s KILL {WORKER}", check=False)
        time.sleep(0.3)
    wait_for(receiver, 3, 120)
    worker = alerts(receiver)[2]
    assert checks(worker, "failing") == [f"unit:{WORKER}"] and f"{WORKER} is" in worker["text"], worker
    time.sleep(3 * INTERVAL + 5)
    assert len(receiver.received) == 3, alerts(receiver)

    # Both back: recoveries (one run may see both).
    host.exec(f"systemctl start greeting.service && systemctl reset-failed {WORKER} && systemctl start {WORKER}")
    deadline = time.monotonic() + 120
    while {c for a in alerts(receiver)[3:] for c in checks(a, "recovered")} != {
            "greeting:health", "unit:greeting.service", f"unit:{WORKER}"}:
        assert time.monotonic() < deadline, alerts(receiver)
        time.sleep(0.5)
    assert all(a["state"] == "recovered" and not a["failing"] for a in alerts(receiver)[3:])
    assert "RECOVERED: greeting's health check failed" in " ".join(a["text"] for a in alerts(receiver)[3:])

    # A renewed certificate: one recovery.
    count = len(receiver.received)
    fresh, fresh_key = _self_signed(work, "watch.test", days=90)
    renewed = run_deploy(inventory, work, data={"tls_certificate": str(fresh), "tls_certificate_key": str(fresh_key)})
    assert TOKEN not in renewed.output
    wait_for(receiver, count + 1, 60)
    assert checks(alerts(receiver)[count], "recovered") == ["certificate:/etc/nginx/tls/greeting.crt"]

    # A stopped watch shows in ops.py status.
    host.exec("systemctl stop pyinfra-flask-watch.timer")
    status = subprocess.run([sys.executable, "ops.py", str(inventory), "status"], cwd=REPO_ROOT, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert status.returncode == 1, status.stdout + status.stderr
    assert (f"[{host.name}] greeting: the watch's timer pyinfra-flask-watch.timer is inactive: nothing is checked "
            "or alerted") in status.stdout
    assert TOKEN not in status.stdout + status.stderr
