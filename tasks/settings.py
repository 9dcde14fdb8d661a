"""Every setting of the deploy, with its default, in one place.

Settings are pyinfra host/group data: set them in an inventory (per host or per
group), in ``group_data/*.py``, or on the command line with ``--data key=value``.
``load_apps`` validates the whole lot before any operation is added, so a typo
or a bad value stops the run before any host is changed.

The README's settings table is generated from this module
(``python -m tasks.settings``) and a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from dotenv import parser as dotenv_parser
from pyinfra.api.exceptions import DeployError

from tasks import REPO_ROOT, acme, reserved, static

# A name that becomes a Unix user, a systemd unit, a directory and an nginx file name.
NAME_RE = r"^[a-z][a-z0-9_-]{0,30}$"
# Absolute paths without whitespace, quotes or shell/nginx/ini metacharacters.
ABS_PATH_RE = r"^/[A-Za-z0-9._/+-]*$"
# An import path and a callable: `wsgi:app`, `pkg.module:app` or a factory `pkg:create_app()`.
ENTRY_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\(\))?$"
# nginx server_name values: host names, wildcards, IPv4 addresses, or `_` (catch-all).
SERVER_NAME_RE = r"^(_|\*\.[A-Za-z0-9.-]+|\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?(\.\*)?|\[[0-9a-fA-F:]+\])$"
# A request path for the health check: no spaces, quotes or shell metacharacters.
URL_PATH_RE = r"^/[A-Za-z0-9._~/%=&+-]*(\?[A-Za-z0-9._~/%=&+-]*)?$"
# A TCP socket: IPv4 address, host name or [IPv6] address, then a port.
SOCKET_RE = r"^([0-9.]+|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\]):[0-9]{1,5}$"
# nginx sizes: `75M`, `512k`, `1g`, `0` (no limit).
SIZE_RE = r"^[0-9]+[kKmMgG]?$"
STATIC_URL_RE = r"^/([A-Za-z0-9._-]+/)*$"
VERSION_RE = r"^[0-9]+\.[0-9]+\.[0-9]+$"
REL_PATH_RE = r"^[A-Za-z0-9._/-]*$"
# Release ids: the deploying machine's UTC time, the git commit if any, the run's id.
RELEASE_ID_RE = r"^[0-9]{8}T[0-9]{6}Z(-[0-9a-f]{4,40}){0,2}$"

# systemd's confinement of everything that runs as the app user: the service
# (templates/uwsgi.service.j2) and the release tool's steps in a new release (venv
# build, import check, before-switch commands, canary; rendered into
# release-tool.json). Each adds ReadWritePaths= for where it must write. No
# capabilities at all: uWSGI binds a unix socket in its own directory or a port
# above 1024, and never changes users itself.
SANDBOX = (
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes", "ProtectKernelLogs=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "RestrictSUIDSGID=yes", "RestrictRealtime=yes",
    "RestrictNamespaces=yes", "LockPersonality=yes", "SystemCallArchitectures=native", "CapabilityBoundingSet=",
    "UMask=0027",
)

# The health check's own address and host names (see Settings.health_url and
# Settings.health_host_header).
HEALTH_ADDRESS = "127.0.0.2"
HEALTH_DOMAIN = "pyinfra-flask.invalid"

# What each pattern means, for error messages people can act on.
PATTERN_HELP = {
    NAME_RE: "must be 1-31 characters: lowercase letters, digits, '-' or '_', "
    "starting with a letter",
    RELEASE_ID_RE: "must be a release id like '20261121T073000Z-3a98e1d-5f0c2a' (see releases.py)",
    ABS_PATH_RE: "must be an absolute path of letters, digits and . _ / + - "
    "(no spaces, quotes or shell/nginx metacharacters)",
    ENTRY_RE: "must be 'module:callable' (e.g. 'wsgi:app') or a factory "
    "'package:create_app()'",
    SERVER_NAME_RE: "must be a host name, '*.example.com', an IP address or '_'",
    URL_PATH_RE: "must be a URL path starting with '/' (no spaces, quotes or ';')",
    SIZE_RE: "must be a size like '75M', '512k' or '1g'",
    STATIC_URL_RE: "must start and end with '/' (e.g. '/static/')",
    VERSION_RE: "must be a release version like '2.0.31'",
    REL_PATH_RE: "must be a relative path of letters, digits and . _ / -",
    SOCKET_RE: "must be 'unix' or ADDRESS:PORT, e.g. '10.0.0.5:3031' or '[fd00::5]:3031'",
}


def _no_dot_dot(value: str) -> str:
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def _relative_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("must be a path inside the app directory, without '..'")
    return value


AbsPath = Annotated[str, Field(pattern=ABS_PATH_RE), AfterValidator(_no_dot_dot)]
AppDirectory = Annotated[AbsPath, AfterValidator(reserved.app_directory)]
RelPath = Annotated[str, Field(pattern=REL_PATH_RE), AfterValidator(_relative_path)]
Port = Annotated[int, Field(ge=1, le=65535)]
ServerName = Annotated[str, Field(pattern=SERVER_NAME_RE, max_length=253)]


class Settings(BaseModel):
    """The deploy's settings. Field descriptions become the README table."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # Set from the inventory's groups (tasks/topology.py), never from data.
    _behind_balancer: bool = PrivateAttr(default=False)

    # The app
    app_name: Annotated[str, AfterValidator(reserved.unit)] = Field(
        "greeting",
        pattern=NAME_RE,
        description="Name of the app: its system user and group, systemd unit, "
        "nginx site and directory names derive from it.",
    )
    app_source: str = Field(
        "files/greeting",
        min_length=1,
        description="Local directory with the app's code, uploaded to the host "
        "(relative paths are relative to the repository root).",
    )
    app_entry: str = Field(
        "wsgi:app",
        pattern=ENTRY_RE,
        description="WSGI entry point: `module:callable`, or an application factory "
        "`package:create_app()`.",
    )
    app_requirements: RelPath = Field(
        "requirements.txt",
        min_length=1,
        description="The app's pip requirements file, relative to `app_source`.",
    )
    app_static_dir: RelPath | None = Field(
        None,
        description="Directory (relative to `app_source`) that nginx serves itself "
        "under `app_static_url`; empty to serve no static files. Default: the app's own static "
        "folder, found in its `Flask(...)` call (`static/` beside the module, `pkg/static` for a "
        "package, its `static_folder`), or none when it has none.",
    )
    app_static_url: str | None = Field(
        None,
        pattern=STATIC_URL_RE,
        description="URL prefix for the static directory; starts and ends with `/`. Default: the "
        "app's `static_url_path`, or `/static/`.",
    )
    url_prefix: Annotated[str, AfterValidator(reserved.no_dot_segments)] = Field(
        "/",
        pattern=r"^/([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?/?$",
        description="URL path the app is mounted under, e.g. `/blog` (it sees SCRIPT_NAME "
        "`/blog`; `/blog` and `/blog/` both reach it). Several apps can share a host name "
        "under different prefixes.",
    )
    websockets: bool = Field(
        False,
        description="Serve WebSockets: uWSGI runs gevent with `http-websockets` on an HTTP "
        "socket and nginx proxies with the Upgrade headers. Needs `gevent` in the app's "
        "requirements; threads are not used.",
    )
    app_user: Annotated[str, AfterValidator(reserved.account)] | None = Field(
        None,
        pattern=NAME_RE,
        description="Unprivileged system user (and group) the app runs as. "
        "Default: `app_name`.",
    )
    app_root: AppDirectory | None = Field(
        None,
        description="Directory on the host holding code, venv and uWSGI config. "
        "Default: `/srv/<app_name>`.",
    )
    shared_paths: list[RelPath] = Field(
        ["instance/"],
        description="Paths (relative to the app) kept outside the releases and linked into "
        "each, so data survives redeploys and rollbacks; a trailing `/` makes a directory, "
        "otherwise a file.",
    )
    app_env_file: str | None = Field(
        None, min_length=1,
        description="Local file of `KEY=value` lines (keep it out of git) that become the app's "
        "environment: uploaded with mode 600, owned by the app user, never printed.",
    )
    app_env_from: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        [],
        description="Names of environment variables of the shell running pyinfra to pass to the app "
        "the same way (e.g. `SECRET_KEY`).",
    )
    keep_releases: int = Field(5, ge=1, le=100, description="Releases kept on the host (the live one always).")
    before_switch_commands: list[str] = Field(
        [],
        description="Shell commands run in a new release as the app user (venv on PATH) "
        "before it goes live, e.g. migrations; a failure stops the deploy, the live "
        "release untouched.",
    )
    rollback_app: str | None = Field(
        None,
        pattern=NAME_RE,
        description="For `rollback.py` on hosts with several `apps`: which app to roll back.",
    )
    rollback_to: str | None = Field(
        None,
        pattern=RELEASE_ID_RE,
        description="For `rollback.py`: the release to go back to. Default: the one live before the "
        "live one, by the host's own record.",
    )
    release_id: str | None = Field(
        None,
        pattern=RELEASE_ID_RE,
        description="The id of the release this run makes. `rollout.py` sets one for the whole fleet, so "
        "`rollback_to` names it on every host. Default: one per run (time, git commit, run id).",
    )
    deploy_lock_timeout: int = Field(
        120, ge=0, le=3600,
        description="Seconds a deploy (or rollback) waits for another run's lock on the app before it "
        "stops, naming the holder.",
    )
    deploy_lock_break: bool = Field(
        False,
        description="Break the app's deploy lock whoever holds it (after a run died on another machine: "
        "one on this machine whose process is gone is recognised by itself).",
    )

    # uWSGI
    uwsgi_version: str = Field(
        "2.0.31",
        pattern=VERSION_RE,
        description="uWSGI version pinned in the venv (compiled on the host, with PCRE).",
    )
    uwsgi_processes: int | None = Field(
        None, ge=1, le=256,
        description="uWSGI worker processes. Default: one per CPU of the host (from its facts), "
        "at least 2, at most 16.",
    )
    uwsgi_threads: int | None = Field(
        None, ge=1, le=256,
        description="Threads per worker process. Default: 2 (1 for `websockets` apps, "
        "where gevent and threads conflict).",
    )
    uwsgi_async_cores: int = Field(
        100, ge=1, le=10000,
        description="Concurrent requests (gevent greenlets) per worker for `websockets` apps.",
    )
    uwsgi_harakiri: int = Field(
        30, ge=0, le=3600, description="Seconds before a stuck request's worker is killed "
        "(0 disables)."
    )
    uwsgi_max_requests: int = Field(
        0, ge=0, le=10_000_000,
        description="Requests a worker serves before it is recycled, against slow leaks "
        "(0: never; recycling is spread with `max-requests-delta` so workers never all go at once).",
    )
    uwsgi_listen: int = Field(
        1024, ge=1, le=4096,
        description="Socket listen backlog: requests queued while all workers are busy.",
    )
    uwsgi_socket: Literal["unix"] | Annotated[str, Field(pattern=SOCKET_RE)] | None = Field(
        None,
        description="Where uWSGI listens (uwsgi protocol): `unix` (a socket under /run, "
        "nginx's group only) or `ADDRESS:PORT` (TCP). Default: `unix`, or "
        "`<private_address>:3031` on app servers behind a load balancer.",
    )
    private_address: Annotated[str, AfterValidator(_ip_address)] | None = Field(
        None,
        description="The host's address on the private network: app servers in the `app_servers` "
        "group are reached on it by their load balancers, and each balancer in `load_balancers` "
        "connects from it (the only addresses the app servers' firewall lets reach uWSGI). "
        "Required on both when there are `load_balancers`.",
    )
    uwsgi_log_requests: bool = Field(
        False,
        description="Log every request in uWSGI's log too (nginx's access log already has them; "
        "off saves a log write per request). Errors and start-up lines are always logged.",
    )
    uwsgi_log: Literal["journal"] | AbsPath = Field(
        "journal",
        description="`journal` (read with `journalctl -u <app_name>`) or an absolute "
        "log file path.",
    )

    # nginx
    nginx_port: Port = Field(80, description="Port nginx listens on for the site.")
    nginx_server_names: list[ServerName] = Field(
        ["_"],
        min_length=1,
        description="nginx `server_name` values; `_` matches any host name.",
    )
    nginx_client_max_body_size: str = Field(
        "75M", pattern=SIZE_RE, description="Largest request body nginx accepts."
    )
    nginx_static_max_age: str = Field(
        "30d", pattern=r"^(off|[0-9]+[smhdwMy]?)$",
        description="How long browsers may cache static files (nginx `expires`), or `off`.",
    )
    tls_certificate: str | None = Field(
        None, min_length=1,
        description="Local path of the site's certificate (PEM, full chain) to serve HTTPS with; "
        "with `tls_certificate_key`.",
    )
    tls_certificate_key: str | None = Field(
        None, min_length=1,
        description="Local path of the certificate's private key: uploaded with mode 600, "
        "never shown in `--diff` output.",
    )
    tls_port: Port = Field(443, description="HTTPS port, when a certificate is set.")
    tls_redirect_http: bool = Field(
        True, description="With TLS: answer plain HTTP with a redirect to HTTPS (else serve both)."
    )
    tls_hsts_max_age: int = Field(
        0, ge=0, le=63072000,
        description="With TLS: send Strict-Transport-Security with this max-age (0: no HSTS).",
    )
    # ACME (automatic HTTPS): checked by tasks/acme.py `check`, see docs/https.md.
    tls_acme: bool = Field(
        False,
        description="Get the site's certificate from an ACME CA (Let's Encrypt by default) with certbot's "
        "HTTP-01 webroot method, renew it twice a day and reload nginx; instead of `tls_certificate`. Needs "
        "`acme_email`, real host names in `nginx_server_names` and `nginx_port` 80. On a load balancer's "
        "inventory only the balancers get certificates.",
    )
    acme_email: str | None = Field(None, min_length=1, description="Contact address registered with the ACME CA "
                                   "(expiry notices); required with `tls_acme`.")
    acme_directory: str = Field(
        "https://acme-v02.api.letsencrypt.org/directory", min_length=1,
        description="The ACME CA's directory URL. Let's Encrypt's staging CA (for trying things out, "
        "untrusted certificates, high limits): `https://acme-staging-v02.api.letsencrypt.org/directory`.",
    )
    acme_ca_bundle: str | None = Field(None, min_length=1, description="Local PEM file of the CA(s) to trust for "
                                       "HTTPS to `acme_directory` (a private or test CA); default: the host's own "
                                       "trust store.")
    acme_min_valid_days: int = Field(
        14, ge=1, le=3650,
        description="The deploy fails when the live ACME certificate expires in fewer days than this "
        "(certbot renews from 30 days before: a certificate this close means renewal is failing).",
    )
    nginx_access_log: AbsPath | Literal["off"] | None = Field(
        None,
        description="Site access log, or `off`. Default: `/var/log/nginx/<app_name>.access.log`.",
    )
    nginx_error_log: AbsPath | None = Field(
        None, description="Site error log. Default: `/var/log/nginx/<app_name>.error.log`."
    )

    # Load balancing (hosts in the `load_balancers` group)
    lb_method: Literal["round_robin", "least_conn", "ip_hash"] = Field(
        "round_robin", description="How the balancer spreads requests over the app servers."
    )
    lb_max_fails: int = Field(
        3, ge=0, le=100,
        description="Failed attempts after which the balancer rests an app server for "
        "`lb_fail_timeout` (0: never).",
    )
    lb_fail_timeout: int = Field(10, ge=1, le=3600, description="Seconds an app server rests after `lb_max_fails`.")

    # Health check and packages
    healthcheck_path: str = Field(
        "/", pattern=URL_PATH_RE, description="Path requested through nginx after a deploy."
    )
    healthcheck_status: int = Field(
        200, ge=100, le=599, description="HTTP status the health check expects."
    )
    healthcheck_body: str = Field(
        "",
        max_length=200,
        pattern=r"^[^\n\r]*$",
        description="Text the health check's response body must contain (empty: any body).",
    )
    healthcheck_timeout: int = Field(5, ge=1, le=120, description="Seconds one health check request may take.")
    healthcheck_retries: int = Field(
        10, ge=1, le=300, description="Attempts (one second apart) before the check fails."
    )
    reload_timeout: int = Field(
        90, ge=5, le=3600,
        description="Seconds uWSGI may take to have every worker on the new release before "
        "the deploy counts it as failed (and rolls back).",
    )
    fact_batch: bool = Field(
        True,
        description="Read a run's facts from each host in one command (the ones the previous run "
        "asked, remembered in `~/.cache/pyinfra-flask`), again when pyinfra starts executing; `false` "
        "leaves every fact to pyinfra (one command each).",
    )
    apt_cache_valid_time: int = Field(
        86400, ge=0,
        description="Seconds the package index counts as fresh; it is refreshed only "
        "when packages are missing and it is older than this.",
    )

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        # Derived defaults are filled in here so the rest of the deploy sees final values.
        derived = {
            "app_user": self.app_user or self.app_name,
            "app_root": self.app_root or f"/srv/{self.app_name}",
            "uwsgi_threads": self.uwsgi_threads or (1 if self.websockets else 2),
            "url_prefix": self.url_prefix.rstrip("/") or "/",
        }
        if self.app_static_dir is None or self.app_static_url is None:
            found = static.find(self.source_dir, self.app_entry.split(":")[0]) if self.source_dir.is_dir() else None
            if self.app_static_dir is None:
                derived["app_static_dir"] = found.directory if found else ""
            if self.app_static_url is None:
                derived["app_static_url"] = found.url if found and self.app_static_dir is None else "/static/"
        derived["nginx_access_log"] = (
            self.nginx_access_log or f"/var/log/nginx/{self.app_name}.access.log"
        )
        derived["nginx_error_log"] = (
            self.nginx_error_log or f"/var/log/nginx/{self.app_name}.error.log"
        )
        for key, value in derived.items():
            object.__setattr__(self, key, value)
        return self

    @model_validator(mode="after")
    def _check_local_app(self) -> Settings:
        source = self.source_dir
        if not source.is_dir():
            raise ValueError(f"app_source: {self.app_source!r} is not a directory ({source})")
        if not (source / self.app_requirements).is_file():
            raise ValueError(
                f"app_requirements: {self.app_requirements!r} not found in {source}"
            )
        module = self.app_entry.split(":")[0]
        module_path = source / Path(*module.split("."))
        if not (module_path.with_suffix(".py").is_file() or (module_path / "__init__.py").is_file()):
            raise ValueError(
                f"app_entry: module {module!r} not found in {source} "
                f"(looked for {module_path.name}.py and {module_path.name}/__init__.py)"
            )
        if self.app_static_dir and not (source / self.app_static_dir).is_dir():
            raise ValueError(
                f"app_static_dir: {self.app_static_dir!r} is not a directory in {source} "
                "(set it to \"\" to serve no static files)"
            )
        return self

    @model_validator(mode="after")
    def _check_features(self) -> Settings:
        if self.websockets:
            if self.uwsgi_threads > 1:
                raise ValueError(
                    f"uwsgi_threads: {self.uwsgi_threads} conflicts with websockets (gevent runs "
                    "the concurrency; threads and gevent do not mix): leave it unset or set 1"
                )
            requirements = (self.source_dir / self.app_requirements).read_text()
            if not re.search(r"(?im)^\s*gevent\b", requirements):
                raise ValueError(f"websockets: needs gevent in {self.app_requirements} (uWSGI's gevent loop)")
        if bool(self.tls_certificate) != bool(self.tls_certificate_key):
            raise ValueError("tls_certificate and tls_certificate_key: set both or neither")
        for key in ("tls_certificate", "tls_certificate_key"):
            path = getattr(self, key)
            if path and not self.local_path(path).is_file():
                raise ValueError(f"{key}: {path!r} is not a file ({self.local_path(path)})")
        if self.tls and self.tls_port == self.nginx_port:
            raise ValueError(f"tls_port: {self.tls_port} is also nginx_port")
        return self

    @model_validator(mode="after")
    def _check_acme(self) -> Settings:
        acme.check(self)
        return self

    @model_validator(mode="after")
    def _check_environment(self) -> Settings:
        if self.app_env_file:
            path = self.local_path(self.app_env_file)
            if not path.is_file():
                raise ValueError(f"app_env_file: {self.app_env_file!r} is not a file ({path})")
            for binding in self._env_bindings():
                if binding.error:
                    raise ValueError(f"app_env_file: line {binding.original.line} of {self.app_env_file} "
                                     "is not KEY=value")
        missing = [name for name in self.app_env_from if name not in os.environ]
        if missing:
            raise ValueError(f"app_env_from: {', '.join(missing)} not set in the shell running pyinfra")
        for key, value in self.environment().items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"app_env_file/app_env_from: the value of {key} spans lines (not supported)")
        return self

    def _env_bindings(self):
        # python-dotenv's parser: the .env syntax Flask and most tools read (quotes,
        # `export`, comments), with the line of anything it cannot read.
        with open(self.local_path(self.app_env_file), encoding="utf-8") as stream:
            return list(dotenv_parser.parse_stream(stream))

    def environment(self) -> dict[str, str]:
        """The app's environment from app_env_file and app_env_from (read on the laptop)."""
        found: dict[str, str] = {}
        if self.app_env_file:
            found = {b.key: b.value or "" for b in self._env_bindings() if b.key and not b.error}
        found.update({name: os.environ[name] for name in self.app_env_from})
        return found

    @property
    def env_file_path(self) -> str:
        return f"{self.app_root}/secrets/app.env"

    @model_validator(mode="after")
    def _check_socket(self) -> Settings:
        if self.uwsgi_tcp:
            port = int(self.uwsgi_tcp.rsplit(":", 1)[1])
            if not 1 <= port <= 65535:
                raise ValueError(f"uwsgi_socket: port {port} is out of range 1-65535")
            if port == self.nginx_port:
                raise ValueError(f"uwsgi_socket: port {port} is nginx's port (nginx_port)")
        return self

    @model_validator(mode="after")
    def _check_paths_apart(self) -> Settings:
        for path in self.shared_paths:
            if path.strip("/") in ("", ".venv", ".deploy-loader.py", ".deploy-release.json"):
                raise ValueError(f"shared_paths: {path!r} would replace the release itself or its venv")
        # Root creates and chowns each shared path: one inside another (which the app
        # can write) would have root working inside a directory the app controls.
        names = [PurePosixPath(path.rstrip("/")) for path in self.shared_paths]
        for path in names:
            outer = next((other for other in names if other in path.parents), None)
            if outer is not None:
                raise ValueError(f"shared_paths: {str(path)!r} is inside the shared {str(outer)!r}/; "
                                 "share the outer one only")
        if self.healthcheck_path.startswith(self.app_static_url) and self.app_static_dir:
            raise ValueError(
                "healthcheck_path: points into app_static_url, so it would test nginx, not the app"
            )
        return self

    @model_validator(mode="after")
    def _check_log_directories(self) -> Settings:
        # The uWSGI log's directory is given to the app user (uWSGI runs as it), so it
        # must be one of the app's own; nginx (root) must never open a log inside a
        # directory the app can write, where the app could put a link in the log's place.
        app_writable = [self.app_root, self.socket_dir, "/tmp", "/var/tmp", "/dev/shm"]
        if self.uwsgi_log != "journal":
            log_dir = str(PurePosixPath(self.uwsgi_log).parent)
            try:
                reserved.app_directory(log_dir, example=f"/var/log/{self.app_name}/uwsgi.log")
            except ValueError as exc:
                raise ValueError(f"uwsgi_log: its directory is given to the app user, and {exc}") from None
            app_writable.append(log_dir)
        for key in ("nginx_access_log", "nginx_error_log"):
            path = PurePosixPath(getattr(self, key))
            if not str(path).startswith("/"):
                continue
            writable = next((d for d in app_writable if PurePosixPath(d) == path.parent
                             or PurePosixPath(d) in path.parents), None)
            if writable:
                raise ValueError(f"{key}: {path} is inside {writable}, where the app user can write: nginx "
                                 "(root) would follow a link the app put in its place; keep nginx's logs in a "
                                 "directory of root's, e.g. /var/log/nginx")
        return self

    # Paths and names the tasks share, derived from the settings.
    @staticmethod
    def local_path(value: str) -> Path:
        """A path on the laptop: relative paths are relative to the repository root."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def source_dir(self) -> Path:
        return self.local_path(self.app_source)

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
    def behind_balancer(self) -> bool:
        """An app server behind a load balancer: TCP socket, no nginx of its own."""
        return self._behind_balancer

    @property
    def uwsgi_tcp(self) -> str | None:
        """`ADDRESS:PORT` when uWSGI listens on TCP, None for the unix socket."""
        return None if self.uwsgi_socket in (None, "unix") else self.uwsgi_socket

    @property
    def uwsgi_address(self) -> str:
        """What both uWSGI's `socket =` and nginx's `uwsgi_pass` name."""
        return self.uwsgi_tcp or f"unix:{self.socket_path}"

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
    def health_host_header(self) -> str:
        """The Host header of every health check (the Healthy fact, the release tool,
        the balancer's check): a name only this app's nginx site has (the templates add
        it to the site's server_name), under the reserved TLD .invalid, so no other
        vhost on the host can answer in its place. `localhost` or the site's own name
        could be claimed by another site, and a broken app would then pass."""
        return f"{self.app_name}.{HEALTH_DOMAIN}"


class SettingsError(DeployError):
    """Bad settings: raised before any operation is added, so no host is changed."""


# Data keys pyinfra itself understands: global arguments (`_sudo`, ...) and
# connector data (`ssh_port`, `docker_identifier`, ...).
def _is_pyinfra_key(key: str) -> bool:
    return key.startswith("_") or any(key.startswith(f"{name}_") for name in _connector_names())


@functools.cache
def _connector_names() -> tuple[str, ...]:
    from pyinfra.api.connectors import get_all_connectors

    return tuple(get_all_connectors())


def validate(data: dict[str, Any], where: str = "settings") -> Settings:
    """Validate a host's data and return its settings, or raise a SettingsError
    that names every bad key and its value."""

    known = set(Settings.model_fields)
    problems = []
    for key in sorted(data):
        if key in known or _is_pyinfra_key(key):
            continue
        hint = difflib.get_close_matches(key, known, n=1)
        problems.append(
            f"{key}: unknown setting" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    ours = {key: value for key, value in data.items() if key in known}
    try:
        settings = Settings(**ours)
    except ValidationError as exc:
        # One line per bad key; a value failing every branch of a union (e.g.
        # `journal` or a path) gets the branches' messages joined.
        by_key: dict[str, tuple[Any, list[str]]] = {}
        for error in exc.errors():
            loc = error["loc"]
            key = "".join([str(loc[0]) if loc else ""] + [f"[{p}]" for p in loc[1:] if isinstance(p, int)])
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "string_pattern_mismatch":
                message = PATTERN_HELP.get(error["ctx"]["pattern"], message)
            by_key.setdefault(key, (error["input"], []))[1].append(message)
        for key, (value, messages) in by_key.items():
            message = ", or ".join(messages)
            problems.append(f"{key} = {value!r}: {message}" if key else message)
        settings = None
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise SettingsError(f"Invalid {where}; nothing was changed on any host:\n{lines}")
    return settings


def load_apps(host) -> list[Settings]:
    """The settings of every app on a pyinfra host, from its inventory, group and
    --data data, with the defaults its place in the inventory implies.

    One app: the settings are the data's top-level keys. Several: `apps` is a list
    of dicts, one per app, each over the top-level keys (shared defaults)."""
    from tasks import topology

    data = host.data.dict()
    apps = data.pop("apps", None)
    where = f"settings for host {host.name!r}"
    login = data.get("ssh_user")
    if apps is None:
        found = [topology.place(host, validate(data, where=where))]
        _check_apps_apart(found, where, login)
        return found
    if not isinstance(apps, list) or not apps or not all(isinstance(app, dict) for app in apps):
        raise SettingsError(f"Invalid {where}; nothing was changed on any host:\n"
                            f"  - apps = {apps!r}: must be a non-empty list of dicts, one per app")
    found, problems = [], []
    for index, app in enumerate(apps):
        try:
            found.append(topology.place(host, validate(
                {**data, **app}, where=f"{where}, apps[{index}] ({app.get('app_name', '?')})")))
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("\n".join(problems))
    _check_apps_apart(found, where, login)
    return found


def _check_apps_apart(apps: list[Settings], where: str, login: str | None = None) -> None:
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
        if app.uwsgi_tcp and app.uwsgi_tcp in sockets:
            problems.append(f"uwsgi_socket = {app.uwsgi_tcp!r}: used by both {sockets[app.uwsgi_tcp]} and {app.app_name}")
        sockets.setdefault(app.uwsgi_tcp, app.app_name)
        site = (app.nginx_port, tuple(app.nginx_server_names))
        tls = (app.tls_certificate, app.tls_certificate_key, app.tls_acme, app.tls_port, app.tls_redirect_http,
               app.tls_hsts_max_age)
        if site in sites and sites[site][1] != tls:
            problems.append(f"tls_*: {app.app_name} and {sites[site][0]} share host names and port, "
                            "so they must share their TLS settings")
        sites.setdefault(site, (app.app_name, tls))
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise SettingsError(f"Invalid {where}; nothing was changed on any host:\n{lines}")


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| Setting | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = "(derived)" if field.default is None else f"`{json.dumps(field.default)}`"
        rows.append(f"| `{name}` | {default} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
