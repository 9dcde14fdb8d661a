"""Metrics for the inventory's `monitoring_servers` host (docs/monitoring.md), on every
host of an inventory that has one: Debian's Prometheus exporters, each listening on
the host's private address only, behind an nftables table that lets in the
monitoring host alone (tasks/steps/firewall.py's guard_metrics).

    prometheus-node-exporter   every host; its textfile collector also serves root's
                               /var/lib/pyinfra-flask/metrics/*.prom
    prometheus-nginx-exporter  hosts running nginx (app servers with their own,
                               balancers), from nginx's stub_status on 127.0.0.1 only
    mtail                      hosts running nginx: each app's requests and 5xx answers,
                               counted from its nginx access log (stub_status has no
                               status codes)
    prometheus-postgres-exporter  hosts running PostgreSQL (the db server, app servers
                               with a local database), as the role `prometheus`
                               (pg_monitor: statistics, no data) over the unix socket
    prometheus-redis-exporter  one per app with its own Redis (`redis`), each a user
                               of its own (systemd's DynamicUser) holding only that
                               app's password, on its standard input opened by systemd
    files/metrics.py           app servers: a root timer writing the apps' uWSGI
                               figures, health, units, certificates and backups for
                               the textfile collector (Debian has no uWSGI exporter)

What the monitoring host scrapes is worked out here too (`scrape_targets`), from the
inventory, with the same rules, so that a target is scraped exactly where an exporter
is installed.
"""

from __future__ import annotations

from typing import NamedTuple

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server, systemd

from tasks import JINJA, REPO_ROOT, TEMPLATES
from tasks.steps import firewall, healthcheck, packages, watch
from tasks.steps.background import redis_certificate_paths, redis_paths
from tasks.steps.database import PSQL, PostgresqlObjects

NODE = "prometheus-node-exporter"
NGINX = "prometheus-nginx-exporter"
REDIS = "prometheus-redis-exporter"
POSTGRES = "prometheus-postgres-exporter"
MTAIL = "mtail"
MTAIL_PORT = 3903
MTAIL_PROGRAM = "/etc/mtail/pyinfra-flask-nginx.mtail"
NODE_PORT = 9100
NGINX_PORT = 9113
POSTGRES_PORT = 9187
# pg_hba.conf lets Debian's prometheus user in as this role, to the postgres database only.
POSTGRES_DSN = "user=prometheus host=/run/postgresql dbname=postgres sslmode=disable"
# The first app's Redis exporter; Debian's own instance (9121, for a Redis on 6379
# without a password) is masked, never started.
REDIS_PORT = 9122
REDIS_UNIT = "pyinfra-flask-redis-exporter@"
REDIS_DEBIAN_UNIT = "/usr/lib/systemd/system/prometheus-redis-exporter.service"
REDIS_ENV_DIR = "/etc/pyinfra-flask/metrics"
# nginx's stub_status, for the nginx exporter on the same host only.
STUB_STATUS = "127.0.0.1:8089"
STUB_STATUS_CONF = "/etc/nginx/conf.d/pyinfra-flask-stub-status.conf"
TEXTFILE_DIR = "/var/lib/pyinfra-flask/metrics"
TEXTFILE = f"{TEXTFILE_DIR}/pyinfra_flask.prom"
TOOL = f"{healthcheck.INSTALL_DIR}/metrics.py"
UNIT = "pyinfra-flask-metrics"
UNIT_DIR = "/etc/systemd/system"


class Exporter(NamedTuple):
    job: str  # Prometheus's job name
    package: str
    port: int
    app: str | None = None  # the app whose Redis it reads


def address(host_address: str, port: int) -> str:
    return f"[{host_address}]:{port}" if ":" in host_address else f"{host_address}:{port}"


def exporters(role_nginx: bool, redis_apps: list[str] = (), postgres: bool = False) -> list[Exporter]:
    """What a host serves: node everywhere, nginx where nginx runs, PostgreSQL where it
    runs, Redis for each app with its own (`redis_apps`, their names)."""
    found = [Exporter("node", NODE, NODE_PORT)]
    if role_nginx:
        found += [Exporter("nginx", NGINX, NGINX_PORT), Exporter("mtail", MTAIL, MTAIL_PORT)]
    if postgres:
        found.append(Exporter("postgres", POSTGRES, POSTGRES_PORT))
    found += [Exporter("redis", REDIS, REDIS_PORT + n, name) for n, name in enumerate(sorted(redis_apps))]
    return found


def runs_nginx(is_balancer: bool, is_app_server: bool, settings) -> bool:
    return is_balancer or (is_app_server and not settings.behind_balancer)


def exporter_args(exporter: Exporter, private_address: str) -> str:
    """The exporter's command line: its private address only, and what it reads."""
    if exporter.package == MTAIL:
        return ""  # Debian's unit builds it from HOST, PORT and LOGS (exporter_env)
    listen = f"--web.listen-address={address(private_address, exporter.port)}"
    if exporter.package == NODE:
        return f"{listen} --collector.textfile.directory={TEXTFILE_DIR}"
    if exporter.package == POSTGRES:
        return listen
    return f"{listen} --nginx.scrape-uri=http://{STUB_STATUS}/stub_status"


def exporter_env(exporter: Exporter, s, apps) -> dict[str, str]:
    """What an exporter's Debian unit reads from /etc/default beside ARGS."""
    if exporter.package == POSTGRES:
        return {"DATA_SOURCE_NAME": POSTGRES_DSN}
    if exporter.package == MTAIL:
        # Debian's unit builds mtail's command line from these.
        return {"HOST": s.private_address, "PORT": str(MTAIL_PORT),
                "LOGS": ",".join(path for path, _ in access_logs(apps))}
    return {}


class Target(NamedTuple):
    host: str
    address: str  # host:port
    app: str | None = None


def scrape_targets(hosts: list[tuple[str, str, bool, list[str], bool]]) -> dict[str, list[Target]]:
    """{job: [targets]} of (host name, private address, runs nginx, apps with Redis, runs
    PostgreSQL) of every host."""
    jobs: dict[str, list[Target]] = {}
    for name, private_address, nginx, redis_apps, postgres in hosts:
        for exporter in exporters(nginx, redis_apps, postgres):
            jobs.setdefault(exporter.job, []).append(Target(name, address(private_address, exporter.port),
                                                            exporter.app))
    return jobs


def access_logs(apps) -> list[tuple[str, str]]:
    """(nginx access log, app) of the apps whose site this host's nginx serves: mtail counts
    their answers (a log named twice counts for the first app)."""
    found: dict[str, str] = {}
    for app in apps:
        if app.nginx_access_log.startswith("/"):
            found.setdefault(app.nginx_access_log, app.app_name)
    return sorted(found.items())


@deploy("Exporters")
def install(s, nginx: bool, monitor: tuple[str, str], interval: int, apps, app_server: bool,
            postgres: bool = False, redis=()):
    """The exporters of this host (`s`: its host-wide settings; `apps`: its apps), reachable
    from `monitor` (name, private address) only; on an app server, the apps' figures every
    `interval` seconds; a Redis exporter for each app whose Redis runs here (`redis`: its
    apps, on an app server or the db server); with `postgres`, PostgreSQL's."""
    redis_apps = [app.app_name for app in redis]
    wanted = exporters(nginx, redis_apps, postgres)
    packages.install_named(s, ["nftables"])
    firewall.guard_metrics([exporter.port for exporter in wanted], monitor)
    files.directory(name=f"Create {TEXTFILE_DIR} (root's; node exporter reads it)", path=TEXTFILE_DIR,
                    user="root", group="root", mode="755")
    if nginx:
        stub = files.template(jinja_env_kwargs=JINJA, name=f"Serve nginx's stub_status on {STUB_STATUS} only",
                              src=str(TEMPLATES / "nginx-stub-status.conf.j2"), dest=STUB_STATUS_CONF, mode="644",
                              listen=STUB_STATUS)
        server.shell(name="Reload nginx (its stub_status changed; nginx -t first)",
                     commands=["nginx -t -q", "systemctl reload nginx"], _if=stub.did_change)
    if redis_apps and not host.get_fact(File, path=REDIS_DEBIAN_UNIT):
        # Debian's own instance would start with the package, on every address: never.
        server.shell(name=f"Keep Debian's {REDIS}.service from starting (masked)",
                     commands=[f"systemctl mask {REDIS}.service"])
    if postgres and "prometheus" not in host.get_fact(PostgresqlObjects)["roles"]:
        server.shell(name="Create the database role prometheus (pg_monitor: statistics, no data)",
                     commands=[f"(cd / && {PSQL} -c 'CREATE ROLE prometheus LOGIN IN ROLE pg_monitor')"])
    packages.install_named(s, list(dict.fromkeys(exporter.package for exporter in wanted)))
    if nginx:
        program = files.template(jinja_env_kwargs=JINJA, name=f"Count each app's answers from nginx's access log "
                                 f"({MTAIL_PROGRAM})", src=str(TEMPLATES / "nginx-answers.mtail.j2"),
                                 dest=MTAIL_PROGRAM, mode="644", logs=access_logs(apps))
    for exporter in wanted:
        if exporter.package == REDIS:
            continue
        config = files.template(
            jinja_env_kwargs=JINJA, name=f"Set {exporter.package}'s command line (/etc/default/{exporter.package})",
            src=str(TEMPLATES / "exporter-default.j2"), dest=f"/etc/default/{exporter.package}", mode="644",
            package=exporter.package, args=exporter_args(exporter, s.private_address), env=exporter_env(exporter, s,
                                                                                                        apps))
        changed = [config, program] if exporter.package == MTAIL else [config]
        # Debian starts it at install with its own defaults, which may fail until systemd stops
        # trying (the nginx exporter, before it is pointed at stub_status): start afresh.
        server.shell(name=f"Restart {exporter.package} (its settings changed)",
                     commands=[f"systemctl reset-failed {exporter.package} 2>/dev/null || true",
                               f"systemctl restart {exporter.package}"],
                     _if=lambda changed=changed: any(op.did_change() for op in changed))
        systemd.service(name=f"Keep {exporter.package} running and started at boot", service=exporter.package,
                        running=True, enabled=True)
    if redis_apps:
        redis_exporters(s, [exporter for exporter in wanted if exporter.package == REDIS], redis)
    if app_server:
        app_figures(interval)


def redis_address(app) -> str:
    """Where the app's Redis exporter reads: its Redis on 127.0.0.1, or on the db server
    the private address it listens on, with TLS (verified by its certificate)."""
    if app.redis_host:
        return f"rediss://{address(app.redis_host, app.redis_port)}"
    return f"redis://127.0.0.1:{app.redis_port}"


def redis_exporters(s, wanted: list[Exporter], apps) -> None:
    """One exporter per app's Redis (templates/redis-exporter@.service.j2)."""
    by_name = {app.app_name: app for app in apps}
    files.directory(name=f"Create {REDIS_ENV_DIR}", path=REDIS_ENV_DIR, user="root", group="root", mode="755")
    unit = files.template(jinja_env_kwargs=JINJA, name=f"Write {REDIS_UNIT}.service (one Redis exporter per app)",
                          src=str(TEMPLATES / "redis-exporter@.service.j2"), dest=f"{UNIT_DIR}/{REDIS_UNIT}.service",
                          mode="644", passwords=redis_paths("%i")["password"], env_dir=REDIS_ENV_DIR)
    systemd.daemon_reload(name="Reload systemd (the Redis exporters' unit changed)", _if=unit.did_change)
    for exporter in wanted:
        app = by_name[exporter.app]
        env = files.template(
            jinja_env_kwargs=JINJA, name=f"Point {app.app_name}'s Redis exporter at its Redis "
            f"({REDIS_ENV_DIR}/redis-{app.app_name}.env)", src=str(TEMPLATES / "redis-exporter.env.j2"),
            dest=f"{REDIS_ENV_DIR}/redis-{app.app_name}.env", mode="644",
            redis=redis_address(app), ca=redis_certificate_paths(app.redis_host)[0] if app.redis_host else None,
            listen=address(s.private_address, exporter.port))
        instance = f"{REDIS_UNIT}{app.app_name}.service"
        server.shell(name=f"Restart {instance} (its unit or settings changed)",
                     commands=[f"systemctl reset-failed {instance} || true", f"systemctl restart {instance}"],
                     _if=lambda env=env: env.did_change() or unit.did_change())
        systemd.service(name=f"Keep {instance} running and started at boot", service=instance, running=True,
                        enabled=True)


def app_figures(interval: int):
    """files/metrics.py and its timer: the apps of the watch's settings (watch.json)."""
    changed = [files.put(name="Install the apps' metrics reader", src=str(REPO_ROOT / "files/metrics.py"), dest=TOOL,
                         user="root", group="root", mode="644")]
    units = [files.template(jinja_env_kwargs=JINJA, name=f"Write {UNIT}.service", src=str(TEMPLATES / "metrics.service.j2"),
                            dest=f"{UNIT_DIR}/{UNIT}.service", mode="644", tool=TOOL, config=watch.CONFIG,
                            out=TEXTFILE),
             files.template(jinja_env_kwargs=JINJA, name=f"Write {UNIT}.timer (every {interval} s)",
                            src=str(TEMPLATES / "metrics.timer.j2"), dest=f"{UNIT_DIR}/{UNIT}.timer", mode="644",
                            interval=interval)]
    systemd.daemon_reload(name="Reload systemd (the metrics reader's units changed)",
                          _if=lambda: any(op.did_change() for op in units))
    systemd.service(name=f"Run {UNIT}.timer (and at boot)", service=f"{UNIT}.timer", running=True, enabled=True)
    server.shell(name=f"Read the apps' figures once and restart {UNIT}.timer (its units changed)",
                 commands=[f"systemctl start {UNIT}.service", f"systemctl restart {UNIT}.timer"],
                 _if=lambda: any(op.did_change() for op in [*units, *changed]))


@deploy("Exporters")
def remove():
    """No monitoring host in the inventory any more: this host's exporters stop and their
    firewall table goes (the Debian packages stay installed, stopped and disabled)."""
    if not host.get_fact(File, path=firewall.METRICS_RULES):
        return
    units = [f"{UNIT}.timer", NODE, NGINX, MTAIL, POSTGRES]
    server.shell(
        name="Stop the exporters and remove their firewall (no monitoring host in the inventory any more)",
        commands=[*(f"systemctl disable --now {unit} 2>/dev/null || true" for unit in units),
                  # Each app's Redis exporter, by name (disable takes no pattern).
                  f"for unit in $(systemctl list-units --all --plain --no-legend '{REDIS_UNIT}*' | cut -d' ' -f1); "
                  'do systemctl disable --now "$unit"; done',
                  f"systemctl disable --now {firewall.METRICS_UNIT}",
                  f"rm -f {UNIT_DIR}/{UNIT}.timer {UNIT_DIR}/{UNIT}.service {UNIT_DIR}/{REDIS_UNIT}.service "
                  f"{firewall.METRICS_DROP_IN} /etc/systemd/system/{firewall.METRICS_UNIT} {firewall.METRICS_RULES} "
                  f"{STUB_STATUS_CONF} {TEXTFILE}",
                  "systemctl daemon-reload",
                  "if [ -d /etc/nginx ] && systemctl is-active -q nginx; then nginx -t -q && systemctl reload nginx; fi"],
    )
