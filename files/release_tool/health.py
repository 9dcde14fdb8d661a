"""The health check (files/healthcheck.py, installed beside the tool) and `health`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from . import base, uwsgi


# Health --------------------------------------------------------------------

def healthcheck():
    """The deploy's one health check (files/healthcheck.py, installed beside the
    release tool's settings name it), loaded once."""
    module = sys.modules.get("pyinfra_flask_healthcheck")
    if module is None:
        spec = importlib.util.spec_from_file_location("pyinfra_flask_healthcheck", base.CONFIG["health_module"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[spec.name] = module
    return module


def health(attempts: int | None = None) -> None:
    """Request the health path until it answers as expected."""
    check = healthcheck()
    try:
        check.wait_healthy(base.CONFIG["health"], attempts)
    except check.Unhealthy as failure:
        raise base.Failure(str(failure)) from None


def cmd_health(args) -> None:
    try:
        health(args.attempts)
    except base.Failure as failure:
        if args.quiet:
            raise
        error_log = subprocess.run(["tail", "-n", "5", base.CONFIG["nginx_error_log"]],
                                   capture_output=True, text=True).stdout
        raise base.Failure(f"HEALTH CHECK FAILED on host {args.host_name}: {failure}\n"
                      f"--- nginx error log ({base.CONFIG['nginx_error_log']}):\n{error_log}"
                      f"--- {base.CONFIG['service']} log:\n{uwsgi.journal_tail(20)}") from None
    base.log(f"healthy: {healthcheck().describe(base.CONFIG['health'])} answered {base.CONFIG['health']['status']}")
