"""One app as the deploy sees it on one host: its settings (tasks/config/settings/) with
the derived defaults filled in, the paths and names the tasks share, and the host's
role in the inventory (tasks/config/topology.py sets `behind_balancer` and the TCP socket
it implies). Frozen: built once per app and host, by tasks/config/checks.py's `validate` and
tasks/config/inventory.py, before any operation is added.

Every setting reads as an attribute (`app.nginx_port`); the ones with a derived
default read as their final value (`app.app_root` is `/srv/<app_name>` when unset),
and `app.settings` keeps them as given.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from dotenv import parser as dotenv_parser

from tasks import REPO_ROOT
from tasks.config import static
from tasks.config.settings import SANDBOX, Settings

# The health check's own address and host names (see App.health_url and
# App.health_host_header).
HEALTH_ADDRESS = "127.0.0.2"
HEALTH_DOMAIN = "pyinfra-flask.invalid"
# The certificate of the db_servers host's Redis, on the app servers (App.redis_url).
REDIS_CA_PATH = "/etc/pyinfra-flask/redis-server.crt"
# Root's directories of the apps' maintenance mode (App.maintenance_dir).
MAINTENANCE_ROOT = "/etc/pyinfra-flask/maintenance"
# Root's directories of the apps' canaries by share of traffic (App.canary_dir).
CANARY_ROOT = "/etc/pyinfra-flask/canary"
# A canary instance on TCP (behind load balancers) listens this far above uWSGI's port (App.canary_address).
CANARY_PORT_OFFSET = 1000


def local_path(value: str) -> Path:
    """A path on the laptop: relative paths are relative to the repository root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


class StaticLocation(NamedTuple):
    """One nginx location of static files (App.static_locations)."""

    url: str  # under the app's mount prefix
    path: str  # nginx's alias
    trusted: str  # links are followed up to this path, never below it
    exact: bool = False  # one file (`location =`)


@dataclasses.dataclass(frozen=True)
class App:
    """One app of one host, resolved: see the module's docstring."""

    settings: Settings
    # The settings whose default is derived, with their final values.
    app_user: str
    app_root: str
    uwsgi_threads: int
    url_prefix: str
    app_static_dir: str
    app_static_url: str
    nginx_access_log: str
    nginx_error_log: str
    uwsgi_socket: str
    redis: bool
    redis_port: int
    # The host's role (tasks/config/topology.py): an app server behind a load balancer
    # listens on TCP and runs no nginx of its own.
    behind_balancer: bool = False
    # Whether this host's timers run the app's `jobs` (tasks/config/topology.py: one app
    # server behind load balancers).
    runs_jobs: bool = True
    # Whether this host runs the app's `migrate_commands` (tasks/config/topology.py: one app
    # server behind load balancers).
    runs_migrations: bool = True
    # The private address of the inventory's db_servers host when the app's
    # PostgreSQL is there (tasks/config/topology.py), else None: a local one.
    database_host: str | None = None
    # The private address of the db_servers host when the app's Redis is there
    # (tasks/config/topology.py), else None: its own on 127.0.0.1.
    redis_host: str | None = None

    @classmethod
    def resolve(cls, app: Settings) -> App:
        """The app of these settings, with the derived defaults filled in."""
        static_dir, static_url = app.app_static_dir, app.app_static_url
        if static_dir is None or static_url is None:
            source = local_path(app.app_source)
            found = static.find(source, app.app_entry.split(":")[0]) if source.is_dir() else None
            if static_dir is None:
                static_dir = found.directory if found else ""
            if static_url is None:
                static_url = found.url if found and app.app_static_dir is None else "/static/"
        return cls(
            settings=app,
            app_user=app.app_user or app.app_name,
            app_root=app.app_root or f"/srv/{app.app_name}",
            uwsgi_threads=app.uwsgi_threads or (1 if app.websockets or app.socketio else 2),
            url_prefix=app.url_prefix.rstrip("/") or "/",
            app_static_dir=static_dir,
            app_static_url=static_url,
            nginx_access_log=app.nginx_access_log or f"/var/log/nginx/{app.app_name}.access.log",
            nginx_error_log=app.nginx_error_log or f"/var/log/nginx/{app.app_name}.error.log",
            uwsgi_socket=app.uwsgi_socket or "unix",
            # Socket.IO's message queue: the local Redis unless switched off (then
            # REDIS_URL must come with the app's environment, tasks/config/checks.py).
            redis=app.socketio if app.redis is None else app.redis,
            # A port of the app's own, the same on every run: clashes are refused
            # (tasks/config/checks.py apps_apart), and 6379 (Debian's own Redis) is never one.
            redis_port=app.redis_port or 6380 + zlib.crc32(app.app_name.encode()) % 1000,
        )

    def __getattr__(self, name: str) -> Any:
        # Called only for names the App lacks: the settings without a derived default.
        settings = self.__dict__.get("settings")
        if settings is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(settings, name)

    # The app's environment, read on the laptop.
    def env_bindings(self) -> list:
        """app_env_file by python-dotenv's parser: the .env syntax Flask and most tools
        read (quotes, `export`, comments), with the line of anything it cannot read."""
        with open(local_path(self.app_env_file), encoding="utf-8") as stream:
            return list(dotenv_parser.parse_stream(stream))

    def environment(self) -> dict[str, str]:
        """The app's environment from app_env_file and app_env_from."""
        found: dict[str, str] = {}
        if self.app_env_file:
            found = {b.key: b.value or "" for b in self.env_bindings() if b.key and not b.error}
        found.update({name: os.environ[name] for name in self.app_env_from})
        return found

    def environment_names(self) -> set[str]:
        """The names of the app's environment, its values unread (none is needed, nor
        app_env_from's variables set, nor app_env_file here)."""
        found = set(self.app_env_from)
        if self.app_env_file and local_path(self.app_env_file).is_file():
            found.update(b.key for b in self.env_bindings() if b.key and not b.error)
        return found

    # Paths and names the tasks share, derived from the settings.
    local_path = staticmethod(local_path)

    @property
    def source_dir(self) -> Path:
        return local_path(self.app_source)

    @property
    def env_file_path(self) -> str:
        return f"{self.app_root}/secrets/app.env"

    @property
    def redis_env_path(self) -> str:
        """REDIS_URL, written on the host (tasks/steps/background.py): root's, mode 600."""
        return f"{self.app_root}/secrets/redis.env"

    @property
    def redis_service(self) -> str:
        """The app's own Redis (tasks/steps/background.py): an instance of Debian's template unit."""
        return f"redis-server@{self.app_name}.service"

    @property
    def redis_url(self) -> str:
        """REDIS_URL, with `%s` where the password goes (filled in on the host). On the
        db server: TLS, the server verified by its certificate and address."""
        if self.redis_host:
            address = f"[{self.redis_host}]" if ":" in self.redis_host else self.redis_host
            return (f"rediss://default:%s@{address}:{self.redis_port}/0"
                    f"?ssl_cert_reqs=required&ssl_ca_certs={REDIS_CA_PATH}")
        return f"redis://default:%s@127.0.0.1:{self.redis_port}/0"

    @property
    def database_env_path(self) -> str:
        """DATABASE_URL, written on the host (tasks/steps/database.py): root's, mode 600."""
        return f"{self.app_root}/secrets/database.env"

    @property
    def database_name(self) -> str:
        """The app's PostgreSQL database and role: its name, `-` made `_` (a plain
        SQL identifier, never quoted)."""
        return self.app_name.replace("-", "_")

    @property
    def environment_files(self) -> list[str]:
        """The EnvironmentFile= lines of every unit running the app's code."""
        found = [self.env_file_path] if self.app_env_file or self.app_env_from else []
        found += [self.redis_env_path] if self.redis else []
        return found + ([self.database_env_path] if self.database else [])

    def unit_prefix(self, name: str) -> str:
        """`<app_name>-<name>`: a worker's (template) or a job's unit name."""
        return f"{self.app_name}-{name}"

    @property
    def worker_instances(self) -> list[str]:
        """Every worker process's unit, `<app>-<name>@N.service`."""
        return [f"{self.unit_prefix(name)}@{n}.service" for name, worker in sorted(self.workers.items())
                for n in range(1, worker.processes + 1)]

    @property
    def tls(self) -> bool:
        return bool(self.tls_certificate) or self.tls_acme

    @property
    def mount_prefix(self) -> str:
        """`/blog` for an app under a prefix, "" for one at the root."""
        return "" if self.url_prefix == "/" else self.url_prefix

    @property
    def code_dir(self) -> str:
        """The live release (a symlink switched on each deploy)."""
        return f"{self.app_root}/current"

    @property
    def uwsgi_venv(self) -> str:
        """uWSGI's own venv: one build per uWSGI version, shared by every app of the
        host and untouched when an app's requirements change."""
        return f"/opt/pyinfra-flask/uwsgi-{self.uwsgi_version}"

    @property
    def service(self) -> str:
        return f"{self.app_name}.service"

    @property
    def release_static_dir(self) -> str:
        """The static directory inside each release that nginx serves (through the
        merge of the kept releases', files/release_tool/assets.py), or "" when there
        is none or it lives in (or is) a shared path."""
        static_dir = self.app_static_dir.strip("/")
        for path in self.shared_paths:
            name = path.rstrip("/")
            if path.endswith("/") and (static_dir == name or static_dir.startswith(name + "/")):
                return ""
        return static_dir

    @property
    def assets_dir(self) -> str:
        """Root's merge of the kept releases' static files, the live one's first
        (files/release_tool/assets.py), served by nginx (or uWSGI behind balancers)."""
        return f"{self.app_root}/assets/live"

    @property
    def assets_urls(self) -> str:
        """Behind load balancers, uWSGI's way to `assets_dir` (its static-map2 appends
        the whole path to this directory, templates/uwsgi.ini.j2)."""
        return f"{self.app_root}/assets/url"

    @property
    def assets_url_link(self) -> str:
        """Root's link to `assets_dir` at the static URL below `assets_urls`."""
        return f"{self.assets_urls}{self.app_static_url.rstrip('/')}"

    @property
    def static_locations(self) -> list[StaticLocation]:
        """Where nginx serves the app's static files from disk, each with the path up
        to which it may follow links (nginx's `disable_symlinks ... from=`).

        The releases' own files are served from root's merge of the kept releases'
        static directories (the live one's first, so a page rendered by an older
        release still finds its assets), reached through root's `live` link and
        holding no link below it. A shared path below the static directory is the
        app user's, and a link in the release leads to it: nginx's user is in every
        app's group, so a link the app plants there would serve any file nginx can
        read, another app's included. Each such shared path gets a location of its
        own, served from its real directory with no link followed past it."""
        static_dir = self.app_static_dir.strip("/")
        if not static_dir:
            return []
        shared = f"{self.app_root}/shared"
        names = [(path.rstrip("/"), path.endswith("/")) for path in self.shared_paths]
        if not self.release_static_dir:
            # The whole static directory lives in (or is) an app-writable one.
            name = next(name for name, is_dir in names
                        if is_dir and (static_dir == name or static_dir.startswith(name + "/")))
            return [StaticLocation(self.app_static_url, f"{shared}/{static_dir}/", f"{shared}/{name}")]
        found = [StaticLocation(self.app_static_url, f"{self.assets_dir}/", self.assets_dir)]
        for name, is_dir in names:
            if not name.startswith(static_dir + "/"):
                continue
            url = self.app_static_url + name[len(static_dir) + 1:]
            if is_dir:
                found.append(StaticLocation(url + "/", f"{shared}/{name}/", f"{shared}/{name}"))
            else:
                # A file: links are refused from its directory on (root's), itself included.
                found.append(StaticLocation(url, f"{shared}/{name}", f"{shared}/{name.rsplit('/', 1)[0]}",
                                            exact=True))
        return found

    @property
    def socket_dir(self) -> str:
        """systemd's RuntimeDirectory for the app: the unix socket, master FIFO, stats."""
        return f"/run/{self.app_name}"

    @property
    def sandbox_properties(self) -> tuple[str, ...]:
        return SANDBOX

    @property
    def socket_path(self) -> str:
        return f"{self.socket_dir}/uwsgi.sock"

    @property
    def uwsgi_tcp(self) -> str | None:
        """`ADDRESS:PORT` when uWSGI listens on TCP, None for the unix socket."""
        return None if self.uwsgi_socket == "unix" else self.uwsgi_socket

    @property
    def uwsgi_address(self) -> str:
        """What both uWSGI's `socket =` and nginx's `uwsgi_pass` name."""
        return self.uwsgi_tcp or f"unix:{self.socket_path}"

    @property
    def gevent(self) -> bool:
        """uWSGI runs the gevent loop with HTTP sockets (WebSockets pass through nginx)."""
        return self.websockets or self.socketio

    def instance_addresses(self, count: int) -> list[str]:
        """A `socketio` app's sockets, one per instance (uWSGI worker, map-socket):
        `/run/<app>/uwsgi-N.sock`, or consecutive TCP ports from uwsgi_socket's."""
        if self.uwsgi_tcp:
            address, port = self.uwsgi_tcp.rsplit(":", 1)
            return [f"{address}:{int(port) + n}" for n in range(count)]
        return [f"{self.socket_dir}/uwsgi-{n}.sock" for n in range(1, count + 1)]

    @property
    def route_cookie(self) -> str:
        """The cookie naming a client's Socket.IO instance (nginx sets it, balancers read it)."""
        return f"route_{self.app_name.replace('-', '_')}"

    @property
    def uwsgi_ini(self) -> str:
        return f"{self.app_root}/uwsgi.ini"

    @property
    def entry_is_factory(self) -> bool:
        return self.app_entry.endswith("()")

    @property
    def health_path(self) -> str:
        """The health check's path as requested from outside (under the prefix)."""
        return self.mount_prefix + self.healthcheck_path

    @property
    def health_url(self) -> str:
        """Where the host requests its own site for the health check: 127.0.0.2, not
        127.0.0.1. nginx picks the server blocks listening on the exact address a
        connection came to before it looks at any name, so another vhost with
        `listen 127.0.0.1:80` would take every request to 127.0.0.1 from our
        `listen 80`; nobody binds 127.0.0.2 (Linux routes all of 127.0.0.0/8 to the
        host itself), so there only the blocks on every address, ours among them,
        are candidates and the name decides."""
        if self.tls and self.tls_redirect_http:
            return f"https://{HEALTH_ADDRESS}:{self.tls_port}{self.health_path}"
        return f"http://{HEALTH_ADDRESS}:{self.nginx_port}{self.health_path}"

    @property
    def maintenance_dir(self) -> str:
        """Root's directory of the app's maintenance mode: the flag `on` (nginx answers
        503 while it exists) and `page.html`. Outside the app root and every directory
        the app user can write, so the app can neither switch it nor change the page."""
        return f"{MAINTENANCE_ROOT}/{self.app_name}"

    @property
    def maintenance_var(self) -> str:
        """The prefix of the app's nginx variables for maintenance mode (one nginx, many apps)."""
        return "pyinfra_flask_" + self.app_name.replace("-", "_")

    @property
    def canary_dir(self) -> str:
        """Root's directory of the app's canary by share of traffic: the flag `on` (nginx
        splits new clients while it exists; the release tool's split.py writes it)."""
        return f"{CANARY_ROOT}/{self.app_name}"

    @property
    def canary_socket_dir(self) -> str:
        """The canary instance's RuntimeDirectory: its socket, master FIFO and stats."""
        return f"/run/{self.app_name}-canary"

    @property
    def canary_address(self) -> str:
        """Where the canary instance listens, as nginx names it: beside uWSGI's unix socket,
        or (uWSGI on TCP, behind load balancers) at the same address, CANARY_PORT_OFFSET
        above uWSGI's port."""
        if self.uwsgi_tcp:
            address, port = self.uwsgi_tcp.rsplit(":", 1)
            return f"{address}:{int(port) + CANARY_PORT_OFFSET}"
        return f"unix:{self.canary_socket_dir}/uwsgi.sock"

    @property
    def canary_ini(self) -> str:
        return f"{self.app_root}/uwsgi-canary.ini"

    @property
    def canary_code_dir(self) -> str:
        """Root's link to the release on trial (the canary instance's `current`)."""
        return f"{self.app_root}/canary"

    @property
    def canary_log(self) -> str:
        """nginx's log of the requests it splits while a canary runs: which instance answered, what."""
        return f"/var/log/nginx/{self.app_name}.canary.log"

    @property
    def health_host_header(self) -> str:
        """The Host header of every health check (the Healthy fact, the release tool,
        the balancer's check): a name only this app's nginx site has (the templates add
        it to the site's server_name), under the reserved TLD .invalid, so no other
        vhost on the host can answer in its place. `localhost` or the site's own name
        could be claimed by another site, and a broken app would then pass."""
        return f"{self.app_name}.{HEALTH_DOMAIN}"
