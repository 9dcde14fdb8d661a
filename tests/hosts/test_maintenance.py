"""Maintenance mode, the audit log, hooks and the webhook on a real host: one fork of
the shared deployed host, two deploys. Maintenance answers real requests with 503
(the page, Retry-After) but not the health check nor an allowed client, survives a
redeploy (whose health gate passes through it), and `off` brings 200 back with no
request failing any other way; the audit shows the test's deploys with the user
and machine running them; the webhook, received by a local HTTP server, and an
after-deploy hook get the release id and the outcome."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import REPO_ROOT, Load, app_variant, run_deploy
from tests.ops.test_maintenance_audit import Receiver

pytestmark = pytest.mark.features

HEALTH = "curl -s -o /dev/null -w '%{http_code}' -H 'Host: greeting.pyinfra-flask.invalid' http://127.0.0.2/"


@pytest.fixture(scope="module")
def host(hosts, deployed_image):
    host = hosts.from_spare(deployed_image)
    yield host
    hosts.remove(host)


def ops(inventory, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "ops.py", str(inventory), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_maintenance_survives_a_redeploy_and_every_step_is_audited_and_announced(host, tmp_path):
    receiver = Receiver()
    page = tmp_path / "page.html"
    page.write_text("<h1>Back at noon</h1>\n")
    after = tmp_path / "after-hook"
    log = tmp_path / "hook.log"
    after.write_text(f'#!/bin/sh\necho "$PYINFRA_FLASK_OUTCOME $PYINFRA_FLASK_RELEASE" >> {log}\n')
    after.chmod(0o755)
    inventory = host.write_inventory(tmp_path / "inventory.py", {
        "maintenance_page": str(page), "maintenance_allow": ["127.0.0.1"], "maintenance_retry_after": 120,
        "webhook_url": receiver.url + "/hook/T0KEN", "after_deploy_hooks": [str(after)]})
    tool = "/srv/greeting/bin/release-tool"
    try:
        first = run_deploy(inventory, tmp_path, data={"app_source": str(app_variant(tmp_path, "Hello v2"))})
        v2 = json.loads(host.exec(f"{tool} list --json"))["live"]
        assert "T0KEN" not in first.output
        assert receiver.bodies[-1]["outcome"] == "success" and receiver.bodies[-1]["release"] == v2
        assert receiver.bodies[-1]["hosts"][host.name]["apps"]["greeting"]["to"] == v2

        assert "maintenance is on for greeting" in ops(inventory, "maintenance", "on").stdout
        answer = requests.get(host.url + "/", timeout=10)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "120"
        assert "Back at noon" in answer.text
        assert requests.get(host.url + "/static/style.css", timeout=10).status_code == 503
        assert host.exec(HEALTH) == "200"  # the health check passes
        assert host.exec("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/") == "200"  # allowed
        # The app user can neither switch it nor change the page.
        for attack in ("rm -f /etc/pyinfra-flask/maintenance/greeting/on",
                       "sh -c 'echo x > /etc/pyinfra-flask/maintenance/greeting/page.html'"):
            host.exec(f"runuser -u greeting -- {attack}", check=False)
        assert host.exec("cat /etc/pyinfra-flask/maintenance/greeting/page.html").strip() == "<h1>Back at noon</h1>"
        assert "MAINTENANCE on" in ops(inventory, "maintenance", "status").stdout

        # A redeploy: its health gate passes, maintenance stays on.
        run_deploy(inventory, tmp_path, data={"app_source": str(app_variant(tmp_path, "Hello v3"))})
        v3 = json.loads(host.exec(f"{tool} list --json"))["live"]
        assert v3 != v2 and receiver.bodies[-1]["release"] == v3 and receiver.bodies[-1]["outcome"] == "success"
        assert requests.get(host.url + "/", timeout=10).status_code == 503

        with Load(host.url + "/", threads=2, interval=0.05) as switching:
            time.sleep(0.5)
            ops(inventory, "maintenance", "off")
            time.sleep(1.5)
        with Load(host.url + "/", threads=2, interval=0.05) as after_off:
            time.sleep(1.5)
        # While on, 503 (the expected answer); no connection error or other failure, then 200 only.
        assert set(switching.failures) <= {"HTTP 503"} and switching.ok > 0, switching.report("switching off")
        assert after_off.failures == [] and after_off.bodies.keys() == {"Hello v3"}, after_off.report("after off")

        entries = [json.loads(line) for line in ops(inventory, "audit", "--json").stdout.splitlines()]
        me = {"user": getpass.getuser(), "machine": socket.gethostname()}
        assert all(entry["host"] == host.name and entry["by"] == me for entry in entries[-4:]), entries
        assert [(e["event"], e.get("to") or e.get("state"), e["result"]) for e in entries[-4:]] == [
            ("deploy", v2, "ok"), ("maintenance", "on", "ok"), ("deploy", v3, "ok"), ("maintenance", "off", "ok")]
        listing = ops(inventory, "releases").stdout
        assert f"{v3}  " in listing and f"* live  deployed by {me['user']}@{me['machine']}" in listing
        assert log.read_text().splitlines() == [f"success {v2}", f"success {v3}"]

        # A release healthy in-process but broken under uWSGI: the gate after its switch
        # rolls it back, and the webhook and the hook say so.
        broken = app_variant(tmp_path, "broken under uWSGI", append='\n@app.before_request\ndef broken():\n'
                             '    if "uwsgi.version" in request.environ:\n        return "boom", 500\n')
        failed = run_deploy(inventory, tmp_path, data={"app_source": str(broken)}, check=False)
        assert failed.returncode != 0 and "Rolled back" in failed.output, failed.output[-3000:]
        assert json.loads(host.exec(f"{tool} list --json"))["live"] == v3
        body = receiver.bodies[-1]
        assert body["outcome"] == "rolled-back", body
        assert body["hosts"][host.name]["outcome"] == "rolled-back"
        assert log.read_text().splitlines()[-1].startswith("rolled-back")
        last = json.loads(ops(inventory, "audit", "--json", "-n", "1").stdout.splitlines()[-1])
        assert (last["event"], last["result"], last["by"]) == ("deploy", "rolled-back", me)
    finally:
        receiver.close()
