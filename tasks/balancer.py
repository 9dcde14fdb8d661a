"""A load balancer: nginx spreading requests over the app servers' uWSGI sockets."""

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks import nginx
from tasks.facts import HttpStatus


@deploy("Load balancer")
def configure(platform, s, upstreams):
    ops = nginx.configure(platform, [nginx.Site(s.app_name, [s])], template="nginx-balancer.conf.j2",
                          s=s, upstreams=upstreams)
    healthy_before = host.get_fact(HttpStatus, url=s.health_url, host_header=s.health_host_header) == s.healthcheck_status
    check = f"""
for attempt in $(seq {s.healthcheck_retries}); do
    status=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time {s.healthcheck_timeout} -H {shlex.quote('Host: ' + s.health_host_header)} {shlex.quote(s.health_url)})
    [ "$status" = "{s.healthcheck_status}" ] && exit 0
    sleep 1
done
echo "HEALTH CHECK FAILED on balancer {host.name}: GET {s.health_url} answered ${{status:-nothing}}," \\
     "expected {s.healthcheck_status}; its upstream: {', '.join(name for name, _ in upstreams)}" >&2
tail -n 5 {shlex.quote(s.nginx_error_log)} >&2
exit 1
"""
    server.shell(
        name=f"Check GET {s.healthcheck_path} through the balancer answers {s.healthcheck_status}",
        commands=[check],
        _if=lambda: not healthy_before or any(op.did_change() for op in ops),
    )
