"""What no single setting's type can say, checked before any operation is added:
each app's settings against the laptop's files and against each other (`check`,
run by `validate` here, which builds the App), and a host's apps against each other
(`apps_apart`, run by tasks/config/inventory.py). Each problem is one line naming the key.

The checks read an App (tasks/config/app.py): the settings with their derived defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.config import release_exclude, reserved
from tasks.config.app import CANARY_PORT_OFFSET, App
from tasks.config.settings import SettingsError, parse
from tasks.config.settings.values import EMAIL_RE


def validate(data: dict[str, Any], where: str = "settings", secrets: bool = True) -> App:
    """The app of a host's data (before its place in the inventory), or a
    SettingsError that names every bad key and its value. The checks of
    tasks/config/checks.py run once every value is valid on its own (without secrets: all
    but the app's environment, see check)."""
    settings, problems = parse(data)
    app = None
    if settings is not None:
        app = App.resolve(settings)
        try:
            check(app, secrets)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError.listing(where, problems)
    return app


def check(app: App, secrets: bool = True) -> None:
    """Raise ValueError with the first problem of one app's settings. Without secrets
    (ops.py: it uploads none) the app's environment is not read: app_env_file need
    not be on this machine, nor app_env_from's variables in its shell."""
    for concern in (local_app, features, acme, *([environment] if secrets else []), background, socket,
                    paths_apart, log_directories, day_two, exclusive_migration, canary):
        concern(app)


def local_app(app: App) -> None:
    """The app's code on the laptop: its directory, requirements, entry module, static files."""
    source = app.source_dir
    if not source.is_dir():
        raise ValueError(f"app_source: {app.app_source!r} is not a directory ({source})")
    # Before anything below reads a file of it: no link is followed, no FIFO opened.
    refused = release_exclude.sort_out(source, app.shared_paths, release_exclude.configured_secrets(app)).refused
    if refused:
        raise ValueError(release_exclude.refusal(app.app_source, refused))
    if not (source / app.app_requirements).is_file():
        raise ValueError(
            f"app_requirements: {app.app_requirements!r} not found in {source}"
        )
    module = app.app_entry.split(":")[0]
    module_path = source / Path(*module.split("."))
    if not (module_path.with_suffix(".py").is_file() or (module_path / "__init__.py").is_file()):
        raise ValueError(
            f"app_entry: module {module!r} not found in {source} "
            f"(looked for {module_path.name}.py and {module_path.name}/__init__.py)"
        )
    if app.app_static_dir and not (source / app.app_static_dir).is_dir():
        raise ValueError(
            f"app_static_dir: {app.app_static_dir!r} is not a directory in {source} "
            "(set it to \"\" to serve no static files)"
        )


def features(app: App) -> None:
    """WebSockets (gevent, no threads) and TLS (both files, a port of its own)."""
    if app.websockets and app.socketio:
        raise ValueError("websockets: socketio serves WebSockets itself (its own sockets and nginx "
                         "config): set one of them")
    if app.gevent:
        key = "socketio" if app.socketio else "websockets"
        if app.uwsgi_threads > 1:
            raise ValueError(
                f"uwsgi_threads: {app.uwsgi_threads} conflicts with {key} (gevent runs "
                "the concurrency; threads and gevent do not mix): leave it unset or set 1"
            )
        requirements = (app.source_dir / app.app_requirements).read_text()
        needed = ["gevent", "Flask-SocketIO"] if app.socketio else ["gevent"]
        for package in needed:
            if not re.search(rf"(?im)^\s*{package.replace('-', '[-_.]')}\b", requirements):
                raise ValueError(f"{key}: needs {package} in {app.app_requirements} (uWSGI's gevent loop)"
                                 if package == "gevent" else f"{key}: needs {package} in {app.app_requirements}")
    if app.socketio:
        if app.uwsgi_processes is not None:
            raise ValueError(f"uwsgi_processes: {app.uwsgi_processes} with socketio: its workers are its "
                             "instances, set socketio_instances instead")
        if not app.redis and "REDIS_URL" not in app.environment_names():
            raise ValueError("redis: off with socketio, but the app's environment (app_env_file, app_env_from) "
                             "has no REDIS_URL for its message queue")
    elif app.socketio_instances is not None:
        raise ValueError(f"socketio_instances: {app.socketio_instances} without socketio")
    if bool(app.tls_certificate) != bool(app.tls_certificate_key):
        raise ValueError("tls_certificate and tls_certificate_key: set both or neither")
    for key in ("tls_certificate", "tls_certificate_key"):
        path = getattr(app, key)
        if path and not app.local_path(path).is_file():
            raise ValueError(f"{key}: {path!r} is not a file ({app.local_path(path)})")
    if app.tls and app.tls_port == app.nginx_port:
        raise ValueError(f"tls_port: {app.tls_port} is also nginx_port")


def environment(app: App) -> None:
    """The app's environment: a readable env file, the shell's variables set, one line each."""
    if app.app_env_file:
        path = app.local_path(app.app_env_file)
        if not path.is_file():
            raise ValueError(f"app_env_file: {app.app_env_file!r} is not a file ({path})")
        for binding in app.env_bindings():
            if binding.error:
                raise ValueError(f"app_env_file: line {binding.original.line} of {app.app_env_file} "
                                 "is not KEY=value")
    missing = [name for name in app.app_env_from if name not in os.environ]
    if missing:
        raise ValueError(f"app_env_from: {', '.join(missing)} not set in the shell running pyinfra")
    for key, value in app.environment().items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"app_env_file/app_env_from: the value of {key} spans lines (not supported)")
    if app.pgbackrest_repository == "s3":
        s3_files(app)
    name = app.alert_smtp_password_from
    if name is not None and not os.environ.get(name, "").strip("\r\n"):
        raise ValueError(f"alert_smtp_password_from: {name} is not set in the shell running pyinfra")
    if name is not None and any(c in os.environ[name] for c in "\r\n\x00"):
        raise ValueError(f"alert_smtp_password_from: {name} must be one line (its value is not shown)")


def s3_files(app: App) -> None:
    """An S3 repository's secret in the shell, its CA file on this machine (one line each)."""
    name = app.pgbackrest_s3_key_secret_from
    if name is not None and not re.fullmatch(r"[\x21-\x7e]{1,256}", os.environ.get(name, "")):
        raise ValueError(f"pgbackrest_s3_key_secret_from: {name} is not set in the shell running pyinfra, or is "
                         "not one word of printable characters (its value is not shown)")
    path = app.pgbackrest_s3_ca_file
    if path and not app.local_path(path).is_file():
        raise ValueError(f"pgbackrest_s3_ca_file: {path!r} is not a file ({app.local_path(path)})")


def background(app: App) -> None:
    """Workers and jobs: one unit name each (`<app_name>-<name>`), under systemd's limits."""
    both = sorted(set(app.workers) & set(app.jobs))
    if both:
        raise ValueError(f"jobs: {', '.join(both)} is also the name of a worker (both would be "
                         f"{app.unit_prefix(both[0])}.service); name them apart")
    for key in ("workers", "jobs"):
        for name in getattr(app, key):
            if len(app.unit_prefix(name)) > 200:
                raise ValueError(f"{key}.{name}: the unit name {app.unit_prefix(name)} is too long")


def socket(app: App) -> None:
    """uWSGI's TCP port: in range, and not nginx's."""
    if app.uwsgi_tcp:
        port = int(app.uwsgi_tcp.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"uwsgi_socket: port {port} is out of range 1-65535")
        if port == app.nginx_port:
            raise ValueError(f"uwsgi_socket: port {port} is nginx's port (nginx_port)")


def paths_apart(app: App) -> None:
    """Shared paths clear of the release and of each other; the health check clear of static files."""
    for path in app.shared_paths:
        if path.strip("/") in ("", ".venv", ".deploy-loader.py", ".deploy-release.json"):
            raise ValueError(f"shared_paths: {path!r} would replace the release itself or its venv")
    # Root creates and chowns each shared path: one inside another (which the app
    # can write) would have root working inside a directory the app controls.
    names = [PurePosixPath(path.rstrip("/")) for path in app.shared_paths]
    for path in names:
        outer = next((other for other in names if other in path.parents), None)
        if outer is not None:
            raise ValueError(f"shared_paths: {str(path)!r} is inside the shared {str(outer)!r}/; "
                             "share the outer one only")
    if app.healthcheck_path.startswith(app.app_static_url) and app.app_static_dir:
        raise ValueError(
            "healthcheck_path: points into app_static_url, so it would test nginx, not the app"
        )


def log_directories(app: App) -> None:
    """uWSGI's log in a directory of the app's; nginx's logs out of every directory the app can write."""
    # The uWSGI log's directory is given to the app user (uWSGI runs as it), so it
    # must be one of the app's own; nginx (root) must never open a log inside a
    # directory the app can write, where the app could put a link in the log's place.
    app_writable = [app.app_root, app.socket_dir, "/tmp", "/var/tmp", "/dev/shm"]
    if app.uwsgi_log != "journal":
        log_dir = str(PurePosixPath(app.uwsgi_log).parent)
        try:
            reserved.log_directory(log_dir, example=f"/var/log/{app.app_name}/uwsgi.log")
        except ValueError as exc:
            raise ValueError(f"uwsgi_log: its directory is given to the app user, and {exc}") from None
        app_writable.append(log_dir)
    for key in ("nginx_access_log", "nginx_error_log"):
        path = PurePosixPath(getattr(app, key))
        if not str(path).startswith("/"):
            continue
        writable = next((d for d in app_writable if PurePosixPath(d) == path.parent
                         or PurePosixPath(d) in path.parents), None)
        if writable:
            raise ValueError(f"{key}: {path} is inside {writable}, where the app user can write: nginx "
                             "(root) would follow a link the app put in its place; keep nginx's logs in a "
                             "directory of root's, e.g. /var/log/nginx")


def apps_apart(apps: list[App], login: str | None = None) -> list[str]:
    """The problems of a host's apps together: each needs its own name, user,
    directory, routes and socket, none may run as the SSH user, and apps sharing a
    site share its TLS settings."""
    problems = []
    for app in apps:
        if login and app.app_user == login:
            problems.append(f"app_user = {app.app_user!r}: is the user pyinfra logs in as (ssh_user); the deploy "
                            "would make it a system account without a login shell")
    for app in apps:
        for other in apps:
            if other is not app and PurePosixPath(other.app_root) in PurePosixPath(app.app_root).parents:
                problems.append(f"app_root = {app.app_root!r}: is inside {other.app_name}'s app_root "
                                f"{other.app_root}; each app needs a directory of its own")
    for key in ("app_name", "app_user", "app_root"):
        seen: dict = {}
        for app in apps:
            value = getattr(app, key)
            if value in seen:
                problems.append(f"{key} = {value!r}: used by both {seen[value]} and {app.app_name} "
                                "(each app needs its own)")
            seen.setdefault(value, app.app_name)
    units: dict = {}
    for app in apps:
        owned = [("app_name", app.service), *[(f"workers.{name}", f"{app.unit_prefix(name)}@.service")
                                              for name in app.workers],
                 *[(f"jobs.{name}", f"{app.unit_prefix(name)}.{kind}") for name in app.jobs
                   for kind in ("service", "timer")]]
        for key, unit in owned:
            if unit in units:
                problems.append(f"{key} of {app.app_name}: its unit {unit} would also be {units[unit]}; "
                                "rename one of them")
            units.setdefault(unit, f"{app.app_name}'s ({key.split('.')[0]})")
    databases: dict = {}
    for app in apps:
        if app.database and app.database_name in databases:
            problems.append(f"app_name = {app.app_name!r}: its PostgreSQL database and role would be "
                            f"{app.database_name}, as {databases[app.database_name]}'s (`-` becomes `_`)")
        if app.database:
            databases.setdefault(app.database_name, app.app_name)
    problems += logs_apart(apps)
    # Each app's Redis on a port of its own, clear of every port the host's apps listen on.
    ports: dict = {}
    for app in apps:
        listening = [("nginx_port", app.nginx_port)] + ([("tls_port", app.tls_port)] if app.tls else [])
        if app.uwsgi_tcp:
            listening.append(("uwsgi_socket", int(app.uwsgi_tcp.rsplit(":", 1)[1])))
        for key, port in listening:
            ports.setdefault(port, f"{app.app_name}'s {key}")
    for app in apps:
        if app.redis:
            if app.redis_port in ports:
                problems.append(f"redis_port = {app.redis_port}: {app.app_name}'s Redis would be on the port of "
                                f"{ports[app.redis_port]}; set redis_port for one of them")
            ports.setdefault(app.redis_port, f"{app.app_name}'s redis_port")
    routes: dict = {}
    sockets: dict = {}
    sites: dict = {}
    for app in apps:
        for name in app.nginx_server_names:
            route = (app.nginx_port, name, app.url_prefix)
            if route in routes:
                problems.append(f"url_prefix = {app.url_prefix!r}: {app.app_name} and {routes[route]} "
                                f"both claim {name}:{app.nginx_port}{app.url_prefix}")
            routes.setdefault(route, app.app_name)
        listens = [(app.uwsgi_tcp, app.app_name)] if app.uwsgi_tcp else []
        if app.uwsgi_tcp and app.canary_share:
            listens.append((app.canary_address, f"{app.app_name}'s canary instance (canary_share)"))
        for address, who in listens:
            if address in sockets:
                problems.append(f"uwsgi_socket = {app.uwsgi_tcp!r}: {address} used by both {sockets[address]} and {who}")
            sockets.setdefault(address, who)
        site = (app.nginx_port, tuple(app.nginx_server_names))
        tls = (app.tls_certificate, app.tls_certificate_key, app.tls_acme, app.tls_port, app.tls_redirect_http,
               app.tls_hsts_max_age)
        if site in sites and sites[site][1] != tls:
            problems.append(f"tls_*: {app.app_name} and {sites[site][0]} share host names and port, "
                            "so they must share their TLS settings")
        sites.setdefault(site, (app.app_name, tls))
    return problems


def logs_apart(apps: list[App]) -> list[str]:
    """The log directories of a host's apps together. uWSGI's log directory is handed
    to its app user (chowned): it must be no other app's (its uWSGI log's, its app
    root or anything in it) and hold no app's nginx logs (which nginx, as root,
    opens by name); nor nest in or around one of those. Each app alone is checked in
    `log_directories`."""
    problems = []
    for app in apps:
        if app.uwsgi_log == "journal":
            continue
        log_dir = PurePosixPath(app.uwsgi_log).parent
        if PurePosixPath(app.app_root) == log_dir or PurePosixPath(app.app_root) in log_dir.parents:
            problems.append(f"uwsgi_log of {app.app_name}: {log_dir} is inside its app_root {app.app_root}, "
                            f"whose directories are root's; use e.g. /var/log/{app.app_name}/uwsgi.log")
            continue
        theirs = []
        for other in apps:
            if other is app:  # its own nginx logs: `log_directories`
                continue
            theirs += [(f"{other.app_name}'s {key}", PurePosixPath(getattr(other, key)).parent)
                       for key in ("nginx_access_log", "nginx_error_log") if getattr(other, key).startswith("/")]
            theirs.append((f"{other.app_name}'s app_root", PurePosixPath(other.app_root)))
            if other.uwsgi_log != "journal" and apps.index(other) > apps.index(app):  # said once
                theirs.append((f"{other.app_name}'s uwsgi_log", PurePosixPath(other.uwsgi_log).parent))
        for name, path in theirs:
            if path == log_dir or path in log_dir.parents or log_dir in path.parents:
                problems.append(f"uwsgi_log of {app.app_name}: its directory {log_dir} would be given to "
                                f"{app.app_user}, and it is (or holds, or is inside) {path}, {name}; each "
                                f"app's uWSGI log needs a directory of its own, e.g. /var/log/{app.app_name}")
                break
    return problems


# The largest maintenance page uploaded (nginx serves it from disk on every request).
MAINTENANCE_PAGE_MAX = 256 * 1024


def day_two(app: App) -> None:
    """The maintenance page, the hooks (local executables) and the webhook's URL (never shown)."""
    if app.maintenance_page:
        path = app.local_path(app.maintenance_page)
        if not path.is_file():
            raise ValueError(f"maintenance_page: {app.maintenance_page!r} is not a file ({path})")
        if path.stat().st_size > MAINTENANCE_PAGE_MAX:
            raise ValueError(f"maintenance_page: {app.maintenance_page!r} is over {MAINTENANCE_PAGE_MAX // 1024} "
                             "KiB (a plain page is enough)")
    for key in ("before_deploy_hooks", "after_deploy_hooks"):
        for hook in getattr(app, key):
            path = app.local_path(hook)
            if not path.is_file() or not os.access(path, os.X_OK):
                raise ValueError(f"{key}: {hook!r} is not an executable file ({path})")
    if app.webhook_url is not None:
        from urllib.parse import urlsplit

        try:
            url = urlsplit(app.webhook_url)
            url.port  # noqa: B018 (a bad port raises)
        except ValueError:
            url = None
        if (url is None or url.scheme not in ("http", "https") or not url.hostname
                or any(c.isspace() for c in app.webhook_url)):
            raise ValueError("webhook_url: must be an http:// or https:// URL (its value is not shown: it may "
                             "hold a token)")


HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
IPV4_RE = re.compile(r"^[0-9.]+$")
DIRECTORY_RE = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")


def exclusive_migration(app: App) -> None:
    """The hold of an exclusive migration (docs/releases.md): something to hold requests
    through, and a bound every timeout on a held request's way outlasts."""
    if not app.migrate_exclusive:
        return
    if not app.migrate_commands:
        raise ValueError("migrate_exclusive: true, but there are no migrate_commands to run exclusively")
    if app.uwsgi_harakiri and app.migrate_hold_timeout + 5 > app.uwsgi_harakiri:
        raise ValueError(f"migrate_hold_timeout: {app.migrate_hold_timeout} s must be at least 5 s below "
                         f"uwsgi_harakiri ({app.uwsgi_harakiri} s), or uWSGI kills a worker holding a request")


def canary(app: App) -> None:
    """A canary by share of traffic (docs/releases.md): nginx (the host's own, or the
    balancers') splits new clients between the live uWSGI instance and the canary's."""
    if not app.canary_share:
        return
    for key, refused in (("migrate_exclusive", app.migrate_exclusive), ("websockets", app.websockets),
                         ("socketio", app.socketio)):
        if refused:
            raise ValueError(f"canary_share: {app.canary_share} % does not go with {key} (choose one; "
                             "docs/releases.md)")
    if app.uwsgi_tcp and int(app.canary_address.rsplit(":", 1)[1]) > 65535:
        raise ValueError(f"canary_share: the canary instance listens {CANARY_PORT_OFFSET} above uWSGI's port, "
                         f"and uwsgi_socket={app.uwsgi_socket!r} leaves no room for it (65535 at most)")


def certificate_names(app: App) -> tuple[str, ...]:
    """The names the site's certificate must cover: its nginx_server_names, as the CA writes them."""
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in app.nginx_server_names))


def acme(app: App) -> None:
    """The ACME settings of one app (`tls_acme`, tasks/steps/acme.py), before any host is touched (a ValueError naming the key)."""
    if not app.tls_acme:
        return
    if app.tls_certificate or app.tls_certificate_key:
        raise ValueError("tls_acme: the certificate comes from the ACME CA, so tls_certificate and "
                         "tls_certificate_key must not be set (use one or the other)")
    if not app.acme_email:
        raise ValueError("acme_email: required with tls_acme (the CA's contact for expiry notices)")
    if not re.match(EMAIL_RE, app.acme_email):
        raise ValueError(f"acme_email: {app.acme_email!r} is not an email address")
    for name in certificate_names(app):
        if not HOST_NAME_RE.match(name) or IPV4_RE.match(name):
            raise ValueError(f"nginx_server_names: {name!r} cannot get an ACME certificate: tls_acme needs the "
                             "site's real host names (no '_', wildcards or IP addresses)")
    if app.nginx_port != 80:
        raise ValueError(f"nginx_port: {app.nginx_port}, but the ACME CA checks the HTTP-01 challenge on port 80 "
                         "(tls_acme needs nginx_port 80)")
    if not DIRECTORY_RE.match(app.acme_directory):
        raise ValueError(f"acme_directory: {app.acme_directory!r} must be an https:// URL (no quotes or spaces)")
    if app.acme_ca_bundle and not app.local_path(app.acme_ca_bundle).is_file():
        raise ValueError(f"acme_ca_bundle: {app.acme_ca_bundle!r} is not a file ({app.local_path(app.acme_ca_bundle)})")
