"""A load balancer: nginx spreading requests over the app servers' uWSGI sockets."""

from pyinfra import host
from pyinfra.api import deploy

from tasks.steps import healthcheck, nginx


@deploy("Load balancer")
def configure(platform, s, upstreams):
    ops = nginx.configure(platform, [nginx.Site(s.app_name, [s])], template="nginx-balancer.conf.j2",
                          s=s, upstreams=upstreams)
    check = healthcheck.spec(s)
    run = healthcheck.command(check, "--host-name", host.name, "--role", "balancer",
                              "--error-log", s.nginx_error_log,
                              "--context", f"its upstream: {', '.join(name for name, _ in upstreams)}")
    healthcheck.gate(f"Check GET {s.healthcheck_path} through the balancer answers {s.healthcheck_status}",
                     check, run, triggers=[healthcheck.install(), *ops])
