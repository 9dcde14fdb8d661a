"""The last word of every deploy: does the app answer through nginx?"""

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.facts import HttpStatus


def _host_header(s) -> str:
    """A Host header nginx routes to this site."""
    for name in s.nginx_server_names:
        if name == "_":
            return "localhost"
        if "*" not in name:
            return name.strip(".")
    return s.nginx_server_names[0].replace("*.", "www.").replace(".*", ".com").strip(".")


@deploy("Health check")
def verify(s, service_ops):
    url = f"http://127.0.0.1:{s.nginx_port}{s.healthcheck_path}"
    host_header = _host_header(s)
    # Read before anything changes: a healthy host where nothing is about to be
    # restarted or reloaded needs no second look, so a no-op run stays "No changes".
    healthy_before = host.get_fact(HttpStatus, url=url, host_header=host_header) == s.healthcheck_status

    expected = s.healthcheck_status
    check = f"""
for attempt in $(seq {s.healthcheck_retries}); do
    status=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -H {shlex.quote('Host: ' + host_header)} {shlex.quote(url)})
    [ "$status" = "{expected}" ] && exit 0
    sleep 1
done
echo "HEALTH CHECK FAILED on host {host.name}: GET {url} (Host: {host_header}) through nginx" \\
     "answered ${{status:-nothing}}, expected {expected}, after {s.healthcheck_retries} attempts." >&2
echo "--- nginx error log ({s.nginx_error_log}):" >&2
tail -n 5 {shlex.quote(s.nginx_error_log)} >&2 2>/dev/null
echo "--- {s.service} log:" >&2
journalctl -u {shlex.quote(s.service)} -n 20 --no-pager -o cat >&2
exit 1
"""
    server.shell(
        name=f"Check GET {s.healthcheck_path} through nginx answers {expected}",
        commands=[check],
        _if=lambda: not healthy_before or any(op.did_change() for op in service_ops),
    )
