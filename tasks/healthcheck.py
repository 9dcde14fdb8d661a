"""The last word of every deploy: does the app answer through nginx?"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from tasks.facts import HttpStatus


@deploy("Health check")
def verify(s, release, service_ops):
    # Read before anything changes: a healthy host where nothing is about to be
    # (re)loaded needs no second look, so a no-op run stays "No changes".
    status = host.get_fact(HttpStatus, url=s.health_url, host_header=s.health_host_header)
    healthy_before = status == s.healthcheck_status
    server.shell(
        name=f"Check GET {s.healthcheck_path} through nginx answers {s.healthcheck_status}",
        commands=[f"{release.tool} --host-name {host.name} health"],
        _if=lambda: not healthy_before or any(op.did_change() for op in service_ops),
    )
