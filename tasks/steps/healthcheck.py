"""The last word of every deploy: does the app answer as it should?

There is one health check, files/healthcheck.py, installed on every host the
deploy manages. Every caller uses it with the check `spec` builds here: the
check after a change (on app servers through the release tool, which adds the
service's journal to a failure; on balancers directly), the `Healthy` fact that
tells whether a host already is healthy, and the release tool's gate after a
switch and its canary before one.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.operations import files, server

from tasks import REPO_ROOT
from tasks import tool as host_tool

INSTALL_DIR = "/usr/local/lib/pyinfra-flask"
MODULE = f"{INSTALL_DIR}/healthcheck.py"
# -I: no PYTHON* variables, no user site; -S: no site-packages at all (the check
# needs only the standard library, and starts faster without them).
PYTHON = "python3 -I -S"


def spec(app) -> dict:
    """The check of one app on this host, as the health check (and the release
    tool's settings) take it."""
    check = {
        "path": app.healthcheck_path,
        "request_path": app.health_path,
        "protocol": "http" if app.gevent else "uwsgi",
        "host_header": app.health_host_header,
        "status": app.healthcheck_status,
        "body": app.healthcheck_body,
        "timeout": app.healthcheck_timeout,
        "retries": app.healthcheck_retries,
    }
    if app.behind_balancer:
        check["uwsgi"] = app.uwsgi_tcp
    else:
        check["url"] = app.health_url
    return check


def command(check: dict, *options: str) -> str:
    """The shell command running the health check with these options."""
    return " ".join([PYTHON, MODULE, "--check", shlex.quote(json.dumps(check, sort_keys=True)),
                     *map(shlex.quote, options)])


class Healthy(FactBase):
    """Whether the app answers its health check right now (one attempt); False
    when it does not, or the health check is not installed yet (a new host), or
    `present` (the app's release tool) is not there yet: an app never deployed is
    not asked for, so its request cannot land on another app's site. Read by the
    deploy's code only (before anything changes): the fact batch never reads it
    again once pyinfra executes (tasks/run/prefetch.py), which would send the app a
    request whose answer nothing uses."""

    prepare_only = True

    def command(self, check: str, present: str = "") -> str:
        guard = f"[ -e {shlex.quote(present)} ] && " if present else ""
        run = command(json.loads(check), "--attempts", "1", "--quiet")
        return f"{guard}[ -f {MODULE} ] && {run} && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return output[-1:] == ["yes"]


@deploy("Health check")
def install():
    """Install the health check (once per host, whatever its role); the operation
    is returned so that a new version of it is a reason to check again."""
    files.directory(name=f"Create {INSTALL_DIR}", path=INSTALL_DIR, user="root", group="root", mode="755")
    return files.put(name="Install the health check", src=str(REPO_ROOT / "files/healthcheck.py"), dest=MODULE,
                     user="root", group="root", mode="644")


def gate(name: str, check: dict, run: str, triggers, present: str = "") -> None:
    """Run the check `run` when the host was not healthy before this run, or when
    an operation in `triggers` changed something. Read before anything changes: a
    healthy host where nothing was (re)loaded needs no second look, so a no-op run
    stays "No changes"."""
    healthy_before = host.get_fact(Healthy, check=json.dumps(check, sort_keys=True), present=present)
    server.shell(name=name, commands=[run],
                 _if=lambda: not healthy_before or any(op.did_change() for op in triggers))


@deploy("Health check")
def verify(app, release, service_ops):
    """After the release's activation: the app answers through nginx (or from uWSGI,
    behind a balancer), or the run fails with the service's log."""
    where = "from uWSGI" if app.behind_balancer else "through nginx"
    gate(f"Check GET {app.healthcheck_path} {where} answers {app.healthcheck_status}", spec(app),
         host_tool.health(release.tool, host.name),
         triggers=[release.settings, *service_ops], present=release.tool)
