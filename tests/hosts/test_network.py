"""Who can reach what on the network: the health check reaches our own nginx site
and nothing else on the host (throwaway hosts). The firewall in front of uWSGI's TCP
socket behind a balancer is tested on the rollout cluster (tests/hosts/test_rollout.py)."""

from __future__ import annotations

import shlex

import pytest

from tests.conftest import app_variant, get, run_deploy
from tests.hosts.test_deploy import GREETING
from tests.hosts.test_releases import live_release

pytestmark = pytest.mark.releases

# Passes the canary before the switch (the app called in-process), answers 500 once
# uWSGI serves it: what only the health check after the switch can catch.
BROKEN_UNDER_UWSGI = '''
@app.before_request
def broken_under_uwsgi():
    if "uwsgi.version" in request.environ:
        return "broken under uWSGI", 500
'''

OTHER_SITES = {
    # Another vhost of the host claiming the name `localhost` (the health check's old Host).
    "named localhost": 'server { listen 80; server_name localhost; location / { return 200 "other"; } }',
    # One bound to the loopback address: nginx picks it for every request to
    # 127.0.0.1:80 before it looks at any name.
    "on 127.0.0.1:80": 'server { listen 127.0.0.1:80; server_name loopback.test; location / { return 200 "loopback"; } }',
}

OTHER_ANSWERS = """for attempt in $(seq 50); do
    answer=$(curl -s -H 'Host: localhost' http://127.0.0.1/)
    case "$answer" in other|loopback) break ;; esac
    sleep 0.1
done
echo "$answer"
"""


@pytest.mark.parametrize("other", OTHER_SITES.values(), ids=OTHER_SITES.keys())
def test_health_check_is_not_answered_by_another_site(fork, tmp_path, other):
    before = live_release(fork)
    fork.exec(f"echo {shlex.quote(other)} > /etc/nginx/sites-enabled/other.conf && nginx -t && systemctl reload nginx")
    # The other site answers 200 on loopback, as it is meant to (once nginx's new
    # workers are up); the app is still the default server.
    assert fork.exec(OTHER_ANSWERS).strip() in ("other", "loopback")
    assert get(fork.url + "/").text.strip() == GREETING
    broken = app_variant(tmp_path, append=BROKEN_UNDER_UWSGI)
    run = run_deploy(fork, tmp_path, data={"app_source": str(broken)}, check=False)
    assert run.returncode != 0, run.output[-3000:]
    assert "answered 500, expected 200" in run.output
    assert "Rolled back" in run.output
    assert live_release(fork) == before
    assert get(fork.url + "/").text.strip() == GREETING
    # A good release still passes the same check: it reaches the app, not the other site.
    run_deploy(fork, tmp_path, data={"app_source": str(app_variant(tmp_path, greeting="Hello, checked"))})
    assert get(fork.url + "/").text.strip() == "Hello, checked"
    assert fork.exec(OTHER_ANSWERS).strip() in ("other", "loopback")
