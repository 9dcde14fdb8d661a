"""The last word of every deploy: does the app answer as it should?"""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import server


class Healthy(FactBase):
    """One health check by the release tool (through nginx, or straight from uWSGI
    behind a balancer); False when it fails or there is no tool yet."""

    def command(self, tool: str) -> str:
        tool = shlex.quote(tool)
        return f"[ -x {tool} ] && {tool} health --attempts 1 --quiet >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return output[-1:] == ["yes"]


@deploy("Health check")
def verify(s, release, service_ops):
    # Read before anything changes: a healthy host where nothing was (re)loaded and
    # the check itself did not change needs no second look, so a no-op run stays
    # "No changes".
    healthy_before = host.get_fact(Healthy, tool=release.tool)
    where = "from uWSGI" if s.behind_balancer else "through nginx"
    server.shell(
        name=f"Check GET {s.healthcheck_path} {where} answers {s.healthcheck_status}",
        commands=[f"{release.tool} --host-name {shlex.quote(host.name)} health"],
        _if=lambda: not healthy_before or any(op.did_change() for op in [release.settings, *service_ops]),
    )
