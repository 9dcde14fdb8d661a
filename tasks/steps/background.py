"""Background workers and scheduled jobs of an app (`workers`, `jobs`), and the
opt-in Redis of each app (`redis`): on the app server, or on the db_servers host
for every app server (`serve_redis`). See docs/workers.md.

    /etc/systemd/system/<app>-<worker>@.service   one instance per process (@1, @2, ...)
    /etc/systemd/system/<app>-<job>.service       oneshot, run by:
    /etc/systemd/system/<app>-<job>.timer         only where the app's jobs run (App.runs_jobs)

Every unit carries MARKER and its app's name, so units of workers and jobs gone from
the settings (or of apps gone from the data) are found and removed. The workers are
(re)started onto a release by the release tool after the release passed its health
gate (files/release_tool/); the deploy restarts them itself only when their unit or
environment changed without a new activation.
"""

from __future__ import annotations

import io
import re
import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy
from pyinfra.facts.files import Directory, File
from pyinfra.operations import apt, files, server, systemd

from tasks import JINJA, TEMPLATES
from tasks.config.app import REDIS_CA_PATH
from tasks.steps.database import self_signed
from tasks.steps.packages import APT_LOCK_WAIT
from tasks.steps.release import ServiceActive
from tasks.steps.secrets import url_from_password, url_from_server

MARKER = "pyinfra-flask background unit of app "
UNIT_DIR = "/etc/systemd/system"
# Each app's Redis (install_redis): an instance of Debian's template unit.
REDIS_TEMPLATE_UNIT = "/usr/lib/systemd/system/redis-server@.service"
REDIS_DROP_IN = "/etc/systemd/system/redis-server@.service.d/pyinfra-flask-container.conf"
REDIS_PASSWORDS = "/etc/pyinfra-flask/redis"
REDIS_MARKER = "pyinfra-flask Redis of app "
# What an app may do in its Redis: everything but administration (CONFIG, ACL, DEBUG,
# MODULE, SAVE, SHUTDOWN, REPLICAOF, MONITOR, CLIENT KILL...): it cannot reconfigure,
# stop or re-point it, nor write files with it.
REDIS_RULES = "+@all -@admin"
# The one Redis shared by every app of the host, before each had its own
# (retire_redis removes it).
REDIS_PASSWORD = "/etc/pyinfra-flask/redis.password"
REDIS_CONF = "/etc/redis/pyinfra-flask.conf"
SHARED_URL = "redis://:%s@127.0.0.1:6379/0"
LEGACY_DROP_IN = "/etc/systemd/system/redis-server.service.d/pyinfra-flask-container.conf"


def systemd_command(command: str) -> str:
    """A shell command as one ExecStart= argument for /bin/sh -c: double-quoted,
    with systemd's own `$` and `%` expansion escaped. The stop signal reaches every
    process of the unit (KillMode=control-group), the command's as well as the shell."""
    text = command.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{text}"'


class BackgroundUnits(FactBase):
    """{"units": {unit file: app}, "enabled": [enabled instances and timers]} of the
    units this deploy wrote for workers and jobs."""

    @staticmethod
    def default() -> dict:
        return {"units": {}, "enabled": []}

    def command(self) -> str:
        return (f"cd {UNIT_DIR} 2>/dev/null && {{ grep -H -F {shlex.quote(MARKER)} -- *.service *.timer "
                "2>/dev/null; for f in *.wants/*@*.service *.wants/*.timer; do [ -L \"$f\" ] && "
                "echo \"enabled:${f#*/}\"; done; }; true")

    def process(self, output: list[str]) -> dict:
        units, enabled = {}, []
        for line in output:
            if line.startswith("enabled:"):
                enabled.append(line[len("enabled:"):])
            elif ":" in line and MARKER in line:
                path, text = line.split(":", 1)
                units[path] = text.split(MARKER, 1)[1].rstrip(").").split()[0].rstrip(").")
        return {"units": units, "enabled": sorted(set(enabled))}


def wanted_units(app) -> dict[str, tuple[str, str, object]]:
    """unit file -> (template, name, its worker or job) for the app on this host."""
    wanted = {}
    for name, worker in app.workers.items():
        wanted[f"{app.unit_prefix(name)}@.service"] = ("worker.service.j2", name, worker)
    for name, job in app.jobs.items():
        wanted[f"{app.unit_prefix(name)}.service"] = ("job.service.j2", name, job)
        if app.runs_jobs:
            wanted[f"{app.unit_prefix(name)}.timer"] = ("job.timer.j2", name, job)
    return wanted


@deploy("Workers and jobs")
def install(s) -> dict[str, object]:
    """Write the app's worker and job units, enable them, start the timers; remove
    what is no longer wanted. Returns {worker name: its unit's op}, for `restart`."""
    found = host.get_fact(BackgroundUnits)
    enabled = set(found["enabled"])
    written = {}
    for unit, (template, name, spec) in wanted_units(s).items():
        kind = "worker" if template.startswith("worker") else "job"
        written[unit] = files.template(
            jinja_env_kwargs=JINJA, name=f"Write the unit of {s.app_name}'s {kind} {name} ({unit})",
            src=str(TEMPLATES / template), dest=f"{UNIT_DIR}/{unit}", mode="644",
            s=s, item=name, worker=spec, job=spec, command=systemd_command(spec.command))
    removed = {unit: remove(unit, enabled) for unit, app in sorted(found["units"].items())
               if app == s.app_name and unit not in written}
    # Worker processes beyond `processes` (it was lowered): stopped and disabled.
    instances = set(s.worker_instances)
    templates = {unit.replace("@.service", "@") for unit in written if unit.endswith("@.service")}
    for unit in sorted(enabled):
        if unit.split("@")[0] + "@" in templates and unit not in instances:
            server.shell(name=f"Stop and disable {unit} (beyond the worker's processes)",
                         commands=[f"systemctl disable --now {shlex.quote(unit)}"])
    changes = [*written.values(), *removed.values()]
    systemd.daemon_reload(name=f"Reload systemd ({s.app_name}'s worker or job units changed)",
                          _if=lambda: any(op.did_change() for op in changes))
    forget(removed)
    for unit in s.worker_instances:
        if unit not in enabled:
            server.shell(name=f"Start {unit} at boot", commands=[f"systemctl enable {shlex.quote(unit)}"])
    for unit, op in written.items():
        if unit.endswith(".timer"):
            if unit not in enabled:
                server.shell(name=f"Start the timer {unit} (and at boot)",
                             commands=[f"systemctl enable --now {shlex.quote(unit)}"])
            else:
                server.shell(name=f"Restart the timer {unit} (its schedule changed)",
                             commands=[f"systemctl restart {shlex.quote(unit)}"], _if=op.did_change)
    return {name: written[f"{s.unit_prefix(name)}@.service"] for name in s.workers}


def forget(removed: dict) -> None:
    """A job stopped mid-run by its removal ends `failed`, and so may its timer: gone
    from the settings, they must not stay in `systemctl --failed` (nor in the status
    of the host) as if a run had failed."""
    if not removed:
        return
    patterns = " ".join(shlex.quote(unit.replace("@.service", "@*.service")) for unit in removed)
    server.shell(name="Forget the failed state of the removed units (systemctl reset-failed)",
                 commands=[f"systemctl reset-failed {patterns} 2>/dev/null || true"],
                 _if=lambda: any(op.did_change() for op in removed.values()))


def remove(unit: str, enabled: set[str]):
    """Stop and disable a worker's instances, a job's timer or service, then remove its unit file."""
    if unit.endswith("@.service"):
        running = sorted(u for u in enabled if u.startswith(unit[: -len(".service")]))
        stop = [f"systemctl disable --now {' '.join(shlex.quote(u) for u in running)}"] if running else []
        stop.append(f"systemctl stop {shlex.quote(unit[: -len('.service')] + '*.service')}")
    else:
        stop = [f"systemctl disable --now {shlex.quote(unit)}"]
    server.shell(name=f"Stop and disable {unit} (no longer in the settings)", commands=stop)
    return files.file(name=f"Remove the unit {unit}", path=f"{UNIT_DIR}/{unit}", present=False)


@deploy("Workers and jobs of apps no longer deployed")
def remove_stale(apps) -> None:
    wanted = {app.app_name for app in apps}
    found = host.get_fact(BackgroundUnits)
    enabled = set(found["enabled"])
    removed = {unit: remove(unit, enabled) for unit, app in sorted(found["units"].items()) if app not in wanted}
    if removed:
        systemd.daemon_reload(name="Reload systemd (units of apps no longer deployed are gone)",
                              _if=lambda: any(op.did_change() for op in removed.values()))
        forget(removed)


@deploy("Workers onto the live release")
def restart(app, units: dict[str, object], activation_ops, environment_ops) -> None:
    """After the release's activation: start the workers not running, and restart the
    ones whose unit or environment changed when no activation (which restarts them
    all, after the health gate) ran."""
    active = host.get_fact(ServiceActive, services=app.worker_instances) if app.worker_instances else {}
    for name, unit_op in units.items():
        instances = [u for u in app.worker_instances if u.startswith(f"{app.unit_prefix(name)}@")]
        quoted = " ".join(shlex.quote(u) for u in instances)
        triggers = [unit_op, *environment_ops]
        server.shell(
            name=f"Restart {app.app_name}'s worker {name} (its unit or environment changed)",
            commands=[f"systemctl restart {quoted}"],
            _if=lambda triggers=triggers: any(op.did_change() for op in triggers)
            and not any(op.did_change() for op in activation_ops),
        )
        stopped = [u for u in instances if not active.get(u)]
        if stopped:
            server.shell(name=f"Start {app.app_name}'s worker {name}",
                         commands=[f"systemctl start {' '.join(shlex.quote(u) for u in stopped)}"])


class Container(FactBase):
    """Whether systemd reports the host is a container (`systemd-detect-virt --container`)."""

    def command(self) -> str:
        return "systemd-detect-virt --container 2>/dev/null || true"

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[-1].strip() not in ("", "none")


class RedisInstances(FactBase):
    """The apps whose Redis instance this deploy set up: {app name: its config file}."""

    @staticmethod
    def default() -> dict:
        return {}

    def command(self) -> str:
        return f"grep -l -F {shlex.quote(REDIS_MARKER)} /etc/redis/redis-*.conf 2>/dev/null || true"

    def process(self, output: list[str]) -> dict:
        return {line[len("/etc/redis/redis-"):-len(".conf")]: line for line in output
                if line.startswith("/etc/redis/redis-") and line.endswith(".conf")}


def redis_paths(name: str) -> dict[str, str]:
    """Where the Redis of the app `name` keeps its configuration, password and data."""
    return {"conf": f"/etc/redis/redis-{name}.conf",  # the path Debian's template unit reads
            "user": f"/etc/redis/redis-{name}.user.conf",  # its one user, the password in it
            "password": f"{REDIS_PASSWORDS}/{name}.password",
            "data": f"/var/lib/redis/{name}"}


def redis_certificate_paths(address: str) -> tuple[str, str]:
    """The db server's self-signed certificate and key for Redis, named after the
    address they are for (a new address: a new certificate). The certificate is
    public, where any user reads it (its Redis exporters verify the server by it);
    the key is Redis's alone."""
    return f"/etc/pyinfra-flask/redis-{address}.crt", f"/etc/redis/pyinfra-flask-{address}.key"


def _redis_package(extra: list[str]):
    """Debian's redis-server (and `extra` packages), its shared instance never
    started, the directory of the passwords. Returns the container drop-in's op."""
    if host.get_fact(Container):
        # Only in containers that cannot set up a user namespace (the stock unit's
        # PrivateUsers=true fails there with 217/USER); never on a real server.
        # Before the package, whose installation starts the service.
        drop_in = files.put(name="Let redis-server@ start in this container (PrivateUsers=no)",
                            src=io.StringIO("[Service]\nPrivateUsers=no\n"), dest=REDIS_DROP_IN, mode="644",
                            create_remote_dir=True)
    else:
        drop_in = files.file(name="No container drop-in for redis-server@", path=REDIS_DROP_IN, present=False)
    systemd.daemon_reload(name="Reload systemd (redis-server@'s drop-in changed)", _if=drop_in.did_change)
    if not host.get_fact(File, path=REDIS_TEMPLATE_UNIT):
        # Debian's own instance (6379, no password: every local user's) must never
        # start, not even for the moment between the package's start and a stop.
        server.shell(name="Keep Debian's shared redis-server.service from starting (masked)",
                     commands=["systemctl mask redis-server.service"])
    if extra:
        apt.packages(name=f"Install redis-server ({', '.join(extra)})", packages=["redis-server", *extra],
                     no_recommends=True, extra_install_args=APT_LOCK_WAIT)
    else:
        apt.packages(name="Install redis-server", packages=["redis-server"])
    for path, mode in (("/etc/pyinfra-flask", "755"), (REDIS_PASSWORDS, "700")):
        files.directory(name=f"Create {path}", path=path, user="root", group="root", mode=mode)
    return drop_in


@deploy("Redis")
def install_redis(apps) -> dict:
    """A Redis of its own for each app with `redis` on this host (Debian's
    redis-server@<app> instance, on 127.0.0.1:<redis_port>, with a password made on
    the host). Returns {app name: the op that made its new password}: its REDIS_URL
    is written again."""
    wanted = [s for s in apps if s.redis and not s.redis_host]
    if not wanted:
        return {}
    drop_in = _redis_package([])
    # The apps on the one Redis shared by every app of the host, before each had its own.
    shared = [s.app_name for s in wanted if host.get_fact(File, path=REDIS_CONF)
              and host.get_fact(RedisUrlIs, path=s.redis_env_path, url=SHARED_URL)]
    if len(shared) > 1:
        logger.warning(f"{host.print_prefix}The shared Redis's data stays in /var/lib/redis/dump.rdb, in no app's "
                       f"Redis: {', '.join(shared)} used it, and their keys cannot be told apart (docs/workers.md)")
    return {s.app_name: _instance(s, drop_in, seed=shared == [s.app_name]) for s in wanted}


@deploy("Redis for the app servers")
def serve_redis(apps, address: str, guard=None) -> None:
    """On the db server: a Redis of its own for each app of the app servers with
    `redis` (`apps`), on `address`:<redis_port> with TLS only (a self-signed
    certificate made here, which the app servers verify) and a password made here;
    `guard` adds the firewall's operations, before any instance listens there.
    Instances of apps no longer there are stopped (their data stays)."""
    if not apps:
        _retire_instances(set())
        return
    drop_in = _redis_package(["nftables"] if guard else [])
    if guard:
        guard()
    tls = redis_certificate_paths(address)
    # Public: the app servers get a copy and verify the server by it (ssl_cert_reqs=required).
    self_signed(address, *tls, owner="redis:redis", what="Redis's")
    for app in apps:
        _instance(app, drop_in, seed=False, address=address, tls=tls)
    _retire_instances({app.app_name for app in apps})


def _instance(app, drop_in, seed: bool, address: str | None = None, tls: tuple[str, str] | None = None):
    """One app's Redis: its password, user, configuration and data, running; on
    `address` with TLS (`tls`: certificate and key) on a db server, else on 127.0.0.1."""
    paths = redis_paths(app.app_name)
    made = None
    if not host.get_fact(File, path=paths["password"]):
        # Made on the host and never printed: pyinfra's output shows only the commands.
        made = server.shell(name=f"Generate {app.app_name}'s Redis password (on the host, root-only)", commands=[
            f"(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {paths['password']})"])
    changes = [drop_in]
    if made or not host.get_fact(File, path=paths["user"]):
        new = f"{paths['user']}.new"
        # Channel rules (`&*`) came with Redis 6.2; 6.0 lets every user use every channel.
        channels = "$(redis-server --version | grep -q ' v=6\\.0\\.' || echo '&* ')"
        changes.append(server.shell(name=f"Write {paths['user']} ({app.app_name}'s Redis user, its password)", commands=[
            f"(umask 027; printf 'user default on >%s ~* %s{REDIS_RULES}\\n' \"$(cat {paths['password']})\" "
            f"\"{channels}\" > {new}) && chown root:redis {new} && mv {new} {paths['user']}"]))
    if not host.get_fact(Directory, path=paths["data"]):
        commands = [f"install -d -m 750 -o redis -g redis {paths['data']}"]
        if seed:
            # The only app on the shared Redis: its data (queued jobs included) goes
            # with it, and holds nothing it could not read there already.
            commands += [f"REDISCLI_AUTH=\"$(cat {REDIS_PASSWORD})\" redis-cli -h 127.0.0.1 -p 6379 save || true",
                         f"if [ -f /var/lib/redis/dump.rdb ]; then install -m 640 -o redis -g redis "
                         f"/var/lib/redis/dump.rdb {paths['data']}/dump.rdb; fi"]
        server.shell(name=f"Create {paths['data']} ({app.app_name}'s Redis data)"
                     + (", with the shared Redis's data" if seed else ""), commands=commands)
    changes.append(files.template(
        jinja_env_kwargs=JINJA, name=f"Write {paths['conf']} ({app.app_name}'s Redis, "
        f"{address + ' with TLS' if address else '127.0.0.1'}:{app.redis_port})",
        src=str(TEMPLATES / "redis.conf.j2"), dest=paths["conf"], user="root", group="redis", mode="640",
        s=app, paths=paths, marker=REDIS_MARKER, rules=REDIS_RULES, address=address, tls=tls))
    systemd.service(name=f"Restart {app.redis_service} (its configuration changed)", service=app.redis_service,
                    running=True, enabled=True, restarted=True, _if=lambda: any(op.did_change() for op in changes))
    systemd.service(name=f"Run {app.redis_service} (and at boot)", service=app.redis_service, running=True,
                    enabled=True)
    return made


@deploy("Redis URL")
def redis_url(app, made: dict) -> list:
    """The app's REDIS_URL (root's, mode 600, read by systemd), or none without
    `redis`. Returns the ops that changed it (the app's units restart on them)."""
    if not app.redis:
        files.file(name=f"No REDIS_URL for {app.app_name}", path=app.redis_env_path, present=False)
        return []
    files.directory(name=f"Create {app.app_root}/secrets (private)", path=f"{app.app_root}/secrets",
                    user="root", group="root", mode="700")
    if app.redis_host:
        return url_from_server(app, "REDIS_URL", app.redis_url, redis_paths(app.app_name)["password"],
                               app.redis_env_path, certificate=redis_certificate_paths(app.redis_host)[0],
                               ca=REDIS_CA_PATH)
    # Written again when it points elsewhere: a new redis_port, or the shared Redis
    # of the deploys before each app had its own.
    current = host.get_fact(RedisUrlIs, path=app.redis_env_path, url=app.redis_url)
    return url_from_password(app, "REDIS_URL", app.redis_url, redis_paths(app.app_name)["password"], app.redis_env_path,
                             made.get(app.app_name) or not current)


class RedisUrlIs(FactBase):
    """Whether the REDIS_URL file `path` holds `url` (`%s` standing for any password
    the deploy makes): only yes or no comes back, never the file's password."""

    def command(self, path: str, url: str) -> str:
        pattern = shlex.quote('REDIS_URL="' + re.escape(url).replace("%s", "[0-9a-f]*") + '"$')
        return f"grep -q -e {pattern} {shlex.quote(path)} 2>/dev/null && echo yes || true"

    def process(self, output: list[str]) -> bool:
        return output == ["yes"]


# Merges a key restored under KEYS[2] into KEYS[1] on the db server's Redis: moved
# when KEYS[1] is not there; else a list's elements appended (queued tasks after those
# queued there since), a set's members, a hash's missing fields and a sorted set's
# missing members added; a string or stream already there is the newer one and stays.
MERGE = """
local key, moved = KEYS[1], KEYS[2]
if redis.call("EXISTS", key) == 0 then redis.call("RENAME", moved, key) return "moved" end
local kind = redis.call("TYPE", moved).ok
if kind ~= redis.call("TYPE", key).ok then redis.call("DEL", moved) return "kept" end
if kind == "list" then
  while redis.call("LMOVE", moved, key, "LEFT", "RIGHT") do end
elseif kind == "set" then
  for _, member in ipairs(redis.call("SMEMBERS", moved)) do redis.call("SADD", key, member) end
elseif kind == "hash" then
  local fields = redis.call("HGETALL", moved)
  for i = 1, #fields, 2 do redis.call("HSETNX", key, fields[i], fields[i + 1]) end
elseif kind == "zset" then
  local members = redis.call("ZRANGE", moved, 0, -1, "WITHSCORES")
  for i = 1, #members, 2 do redis.call("ZADD", key, "NX", members[i + 1], members[i]) end
else
  redis.call("DEL", moved) return "kept"
end
redis.call("DEL", moved)
return "merged"
"""
MOVING_KEY = "pyinfra-flask:moving"


def move_keys(app, paths: dict) -> str:
    """Shell that copies every key (with its time to live) of the app's Redis on this
    app server into the db server's, with Redis's own DUMP and RESTORE (binary-safe
    through redis-cli -x) and MERGE, each deleted here once merged; run once its units
    use the db server's (nothing writes here any more), before this one stops, which
    then holds nothing (a later move back finds no task to run twice). Fails, leaving
    it running with what was not moved, on any refusal (e.g. a newer Redis here than
    there: its DUMP format). The passwords go only into redis-cli's environment, never
    onto a command line."""
    there = (f"redis-cli --tls --cacert {REDIS_CA_PATH} -h {shlex.quote(app.redis_host)} -p {app.redis_port}")
    return "\n".join([
        "set -eu",
        f"systemctl start {shlex.quote(f'redis-server@{app.app_name}.service')}",  # stopped: its data loaded
        f"here_port=$(sed -n 's/^port //p' {paths['conf']})",
        f"here_password=$(cat {paths['password']})",
        "there_password=$(sed -n 's|^REDIS_URL=\"rediss://default:\\([^@]*\\)@.*|\\1|p' "
        f"{app.redis_env_path})",
        '[ -n "$there_password" ] || { echo "no REDIS_URL of the db server in its env file" >&2; exit 1; }',
        'here() ( export REDISCLI_AUTH="$here_password"; exec redis-cli -h 127.0.0.1 -p "$here_port" "$@" )',
        f'there() ( export REDISCLI_AUTH="$there_password"; exec {there} "$@" )',
        f"merge={shlex.quote(MERGE)}",
        'work=$(mktemp -d); trap \'rm -rf "$work"\' EXIT',
        'moving="pyinfra-flask:moving:$(cat /proc/sys/kernel/random/uuid)"  # this app server\'s own',
        "moved=0",
        # Each key deleted here once merged there: what is left was not moved. Passes
        # until none is left (a late writer), at most three, else a failure.
        'databases() { here INFO keyspace </dev/null | sed -n "s/^db\\([0-9]*\\):.*/\\1/p"; }',
        "for pass in 1 2 3; do",
        "  databases=$(databases)",
        '  [ -n "$databases" ] || break',
        '  for db in $databases; do',
        '    here -n "$db" --scan </dev/null > "$work/keys"',
        "    while IFS= read -r key; do",
        '      ttl=$(here -n "$db" PTTL "$key" </dev/null)',
        '      [ "$ttl" = -2 ] && continue  # expired meanwhile',
        '      [ "$ttl" -gt 0 ] || ttl=0',
        '      here -n "$db" --raw DUMP "$key" </dev/null | head -c -1 > "$work/payload"',
        '      [ -s "$work/payload" ] || continue  # expired meanwhile',
        '      answer=$(there -n "$db" -x RESTORE "$moving" "$ttl" < "$work/payload")',
        '      [ "$answer" = OK ] || { echo "RESTORE of $key refused by the db server\'s Redis: $answer" >&2; exit 1; }',
        '      answer=$(there -n "$db" EVAL "$merge" 2 "$key" "$moving" </dev/null)',
        '      case "$answer" in moved|merged|kept) ;; *) echo "$key not merged: $answer" >&2; exit 1;; esac',
        '      here -n "$db" DEL "$key" </dev/null >/dev/null',
        "      moved=$((moved + 1))",
        '    done < "$work/keys"',
        "  done",
        "done",
        '[ -z "$(databases)" ] || { echo "keys are still being written to this Redis" >&2; exit 1; }',
        'echo "$moved keys moved"',
    ])


def _retire_instances(wanted: set[str], moved: dict | None = None) -> None:
    """The Redis instances of apps not `wanted` here stopped, their configuration and
    password removed (their data stays in /var/lib/redis/<app>). `moved`: {app name:
    app} whose Redis is now the db server's: their keys are copied there first."""
    stale = sorted(name for name in host.get_fact(RedisInstances) if name not in wanted)
    for name in stale:
        paths = redis_paths(name)
        if name in (moved or {}):
            app = moved[name]
            server.shell(name=f"Move the keys of {name}'s Redis here to the db server's "
                              f"({app.redis_host}:{app.redis_port}; queued tasks kept, passwords not shown)",
                         commands=[move_keys(app, paths)])
        server.shell(name=f"Stop redis-server@{name} (its app is gone or has no redis)",
                     commands=[f"systemctl disable --now {shlex.quote(f'redis-server@{name}.service')}"])
        for key in ("conf", "user", "password"):
            files.file(name=f"Remove {paths[key]}", path=paths[key], present=False)


@deploy("Redis of apps no longer deployed")
def retire_redis(apps) -> None:
    """Last (every app's units are on their new REDIS_URL): the Redis instances of
    apps gone from the data, without `redis` or whose Redis is now the db server's
    stopped, their configuration and password removed (their data stays in
    /var/lib/redis/<app>); and the shared Redis of the deploys before each app had
    its own, stopped and masked, its configuration and password removed (its data
    stays in /var/lib/redis/dump.rdb)."""
    _retire_instances({s.app_name for s in apps if s.redis and not s.redis_host},
                      moved={s.app_name: s for s in apps if s.redis and s.redis_host})
    if not host.get_fact(File, path=REDIS_CONF):
        return
    # An app without `redis` may still name it in its own environment.
    users = [s.app_name for s in apps if not s.redis
             and re.search(r"@(127\.0\.0\.1|localhost|\[::1\])(:6379)?/", s.environment().get("REDIS_URL", ""))]
    if users:
        logger.warning(f"{host.print_prefix}The shared Redis stays: the REDIS_URL of {', '.join(users)} "
                       "(app_env_file, app_env_from) names it")
    else:
        server.shell(name="Stop the shared redis-server.service (each app has a Redis of its own)",
                     commands=["systemctl disable --now redis-server.service", "systemctl mask redis-server.service"])
        files.line(name="Remove its include from /etc/redis/redis.conf", path="/etc/redis/redis.conf",
                   line=f"include {REDIS_CONF}", present=False)
        for path in (REDIS_CONF, REDIS_PASSWORD, LEGACY_DROP_IN):
            files.file(name=f"Remove {path}", path=path, present=False)
