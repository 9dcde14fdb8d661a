"""The last word of every deploy: does the app answer as it should?"""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import server


class Healthy(FactBase):
    """One health check, as the release tool makes it: through nginx with curl when
    nginx is on the host (a tenth of the CPU of starting Python, on every run), else
    straight from uWSGI by the release tool; False when it fails or there is no tool
    (no release) yet."""

    def command(self, tool: str, url: str | None = None, host_header: str = "", status: int = 200,
                body: str = "", timeout: int = 5) -> str:
        tool = shlex.quote(tool)
        if url is None:
            return f"[ -x {tool} ] && {tool} health --attempts 1 --quiet >/dev/null 2>&1 && echo yes || echo no"
        # As the tool's check: -k, this host's own site over 127.0.0.1 (its certificate
        # names the site, not 127.0.0.1); -L, redirects followed. The status code comes
        # after the body, on a line of its own.
        answer = (f"curl -skL --max-time {int(timeout)} -H {shlex.quote('Host: ' + host_header)} "
                  f"-w '\\n%{{http_code}}' {shlex.quote(url)}")
        checks = [f'[ "${{answer##*\n}}" = {int(status)} ]']
        if body:
            checks.append(f'case "${{answer%\n*}}" in *{shlex.quote(body)}*) ;; *) false ;; esac')
        return (f"[ -x {tool} ] && answer=$({answer} 2>/dev/null) && " + " && ".join(checks)
                + " && echo yes || echo no")

    def process(self, output: list[str]) -> bool:
        return output[-1:] == ["yes"]


@deploy("Health check")
def verify(s, release, service_ops):
    # Read before anything changes: a healthy host where nothing was (re)loaded and
    # the check itself did not change needs no second look, so a no-op run stays
    # "No changes".
    through_nginx = {} if s.behind_balancer else dict(
        url=s.health_url, host_header=s.health_host_header, status=s.healthcheck_status,
        body=s.healthcheck_body, timeout=s.healthcheck_timeout)
    healthy_before = host.get_fact(Healthy, tool=release.tool, **through_nginx)
    where = "from uWSGI" if s.behind_balancer else "through nginx"
    server.shell(
        name=f"Check GET {s.healthcheck_path} {where} answers {s.healthcheck_status}",
        commands=[f"{release.tool} --host-name {shlex.quote(host.name)} health"],
        _if=lambda: not healthy_before or any(op.did_change() for op in [release.settings, *service_ops]),
    )
