"""The deploy on every supported system, proven against mocked facts.

Only Debian can be built into a throwaway host here, so the other systems are
proven the way pyinfra tests its own operations: the real deploy.py runs through
pyinfra's API (prepare, then execute) against hosts whose facts are fixtures, on
pyinfra's @fake connector, and the tests assert the exact commands and files the
operations produce. Each system's facts start from its real /etc/os-release, parsed
by pyinfra's own LinuxDistribution fact, so the distribution names and versions
the deploy keys on are the ones pyinfra reports. No network, no Docker.

What the shell parts of the new facts do is checked separately, by running them
against stub commands (firewall-cmd) or local files (nginx.conf).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest.mock import patch

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.host import Host
from pyinfra.api.operations import run_ops
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_state
from pyinfra.facts.server import LinuxDistribution

from tasks import REPO_ROOT
from tasks.config import platform, topology
from tasks.steps.users import AccountInfo
from tasks.steps.uwsgi import UwsgiBuild, UwsgiBuildInfo
from tasks.steps.firewall import FirewalldAccess, FirewalldPort
from tasks.steps.packages import DebInstalled, RpmMissing

pytestmark = pytest.mark.distros

OS_RELEASE = {
    "debian12": 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\nVERSION="12 (bookworm)"\nID=debian',
    "debian13": 'NAME="Debian GNU/Linux"\nVERSION_ID="13"\nVERSION="13 (trixie)"\nID=debian',
    "ubuntu2204": 'NAME="Ubuntu"\nVERSION_ID="22.04"\nVERSION="22.04.4 LTS (Jammy Jellyfish)"\nID=ubuntu\nID_LIKE=debian',
    "ubuntu2404": 'NAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION="24.04.1 LTS (Noble Numbat)"\nID=ubuntu\nID_LIKE=debian',
    "rocky9": 'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"',
    "alma9": 'NAME="AlmaLinux"\nVERSION="9.4 (Seafoam Ocelot)"\nID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"',
    # Not supported:
    "debian11": 'NAME="Debian GNU/Linux"\nVERSION_ID="11"\nVERSION="11 (bullseye)"\nID=debian',
    "ubuntu2310": 'NAME="Ubuntu"\nVERSION_ID="23.10"\nVERSION="23.10 (Mantic Minotaur)"\nID=ubuntu',
    "centos7": 'NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"',
    "arch": 'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling',
}
SUPPORTED = ("Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 22.04 LTS (jammy), Ubuntu 24.04 LTS (noble), "
             "Rocky Linux 9, AlmaLinux 9")


def distro(system: str) -> dict:
    """What pyinfra's LinuxDistribution fact makes of the system's /etc/os-release."""
    return LinuxDistribution().process(f"/etc/os-release\n{OS_RELEASE[system]}\n---".splitlines())


def host_facts(system: str, *fixtures: dict, **overrides) -> dict:
    """A freshly installed host of the system: none of our packages, nothing of the
    app's, and on RHEL SELinux enforcing and firewalld running (their defaults).
    Facts not named here get their default (no such file, user, unit...).
    Operations read their facts again when they execute: nginx's user is there by
    then (on RHEL the nginx package creates it)."""
    nginx_user = "nginx" if system in ("rocky9", "alma9") else "www-data"
    facts = {
        "LinuxDistribution": distro(system),
        "Os": "Linux",
        "Which": lambda command: f"/usr/bin/{command}",
        "Users": {nginx_user: {"home": "/var/www", "shell": "/usr/sbin/nologin", "group": nginx_user,
                               "groups": [], "comment": "", "password": "x"}},
        "Account": lambda user: (AccountInfo("/var/www", "/usr/sbin/nologin", nginx_user, (nginx_user,))
                                 if user == nginx_user else None),
        "DebPackages": {},
        "DebInstalled": lambda packages: set(),
        "RpmMissing": lambda packages: list(packages),
        "Link": lambda path: ({"link_target": "/etc/nginx/sites-available/default", "user": "root", "group": "root"}
                              if path == "/etc/nginx/sites-enabled/default" else None),
        "SelinuxMode": "enforcing",
        "FirewalldPort": lambda port: False,
        "FirewalldAccess": lambda ports: {"permanent": {"rules": [], "open": []}, "runtime": {"rules": [], "open": []}},
        "DefaultServer": lambda path: "missing",
    }
    for fixture in (*fixtures, overrides):
        facts.update(fixture)
    return facts


# What RHEL 9 looks like once the deploy has run: what the facts of its own steps
# then say.
CONVERGED_RHEL = {
    "RpmMissing": lambda packages: [],
    "FileContextMapping": lambda target: {"user": "system_u", "role": "object_r", "level": "s0",
                                          "type": {"/opt/pyinfra-flask/uwsgi-2.0.31/bin(/.*)?": "bin_t",
                                                   "/srv/greeting/releases(/.*)?": "httpd_sys_content_t",
                                                   "/srv/greeting/assets(/.*)?": "httpd_sys_content_t",
                                                   "/run/greeting(/.*)?": "httpd_var_run_t"}[target]},
    "Mislabelled": lambda paths: [],
    "SelinuxModules": {"base", "apache", "pyinfra_flask_nginx_uwsgi"},
    "SEPorts": {"tcp": {80: "http_port_t", 8080: "http_cache_port_t"}},
    "SEBoolean": lambda boolean: "on",
    "FirewalldPort": lambda port: True,
    "DefaultServer": lambda path: "none",
    "UwsgiBuild": UwsgiBuildInfo("2.0.31", pcre=True, ssl=True),
    "Account": lambda user: {"nginx": AccountInfo("/var/cache/nginx", "/sbin/nologin", "nginx", ("nginx", "greeting")),
                             "greeting": AccountInfo("/srv/greeting", "/usr/sbin/nologin", "greeting", ("greeting",))
                             }.get(user),
}


_DEFAULT = object()


@dataclass
class Run:
    changed: dict[str, list[str]]  # operation name -> its commands, for those that ran any
    uploads: dict[str, str] = field(default_factory=dict)  # destination -> text, of uploads from memory

    def named(self, prefix: str) -> dict[str, list[str]]:
        return {name: commands for name, commands in self.changed.items() if name.startswith(prefix)}


def _text(command) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        return f"upload {command.dest}"
    return repr(command)


def deploy(facts: dict[str, dict], groups: dict[str, list[str]] | None = None,
           host_data: dict[str, dict] | None = None, **data) -> dict[str, Run]:
    """Run deploy.py on fake hosts (name -> facts) through pyinfra's API, as the CLI
    does: prepare every host, then execute. Returns each host's changed operations."""
    host_data = host_data or {}
    inventory = Inventory(
        ([(f"@fake/{name}", host_data.get(name, {})) for name in facts],
         {"fake_delay": 0, "fake_delay_jitter": 0, **data}),
        **{group: ([f"@fake/{name}" for name in members], {}) for group, members in (groups or {}).items()},
    )

    def get_fact(host, cls, *args, **kwargs):
        value = facts[host.name.removeprefix("@fake/")].get(cls.__name__, _DEFAULT)
        if value is _DEFAULT:
            return cls().default()
        return value(*args, **kwargs) if callable(value) else value

    state = State(inventory, Config())
    with ctx_state.use(state), patch.object(Host, "get_fact", get_fact):
        state.set_stage(StateStage.Connect)
        connect_all(state)
        load_deploy(state)
        state.set_stage(StateStage.Execute)
        run_ops(state)
        runs = {}
        for host in inventory:
            changed, uploads = {}, {}
            for op_hash in host.op_hash_order:
                op = state.ops[host][op_hash]
                if op.operation_meta.did_change():
                    with ctx_host.use(host):
                        # Named by their step, without the role that wraps them all.
                        names = (name.split(" | ", 1)[1] if name.startswith(ROLES) else name
                                 for name in state.op_meta[op_hash].names)
                        commands = list(op.command_generator())
                        changed[", ".join(sorted(names))] = [_text(command) for command in commands]
                        uploads.update({command.dest: command.src.getvalue() for command in commands
                                        if isinstance(command, FileUploadCommand) and hasattr(command.src, "getvalue")})
            runs[host.name.removeprefix("@fake/")] = Run(changed, uploads)
    return runs


DEPLOY = str(REPO_ROOT / "deploy.py")
ROLES = ("App server | ", "Load balancer | ", "Database server | ")


def load_deploy(state: State) -> None:
    """Add deploy.py's operations for every host, as `pyinfra INVENTORY deploy.py`
    does (its command-line package's deploy-file loader; not imported, because
    importing that package monkey-patches the whole test process with gevent)."""
    state.set_stage(StateStage.Prepare)
    code = compile(Path(DEPLOY).read_text(), DEPLOY, "exec")
    state.current_deploy_filename = state.current_exec_filename = DEPLOY
    # CLI mode: operations are ordered and matched across hosts by deploy.py's lines.
    with patch("pyinfra.is_cli", True), ctx_config.use(state.config.copy()):
        for host in state.inventory.get_active_hosts():
            with ctx_host.use(host):
                exec(code, {"__file__": DEPLOY})  # noqa: S102 (as pyinfra's command line executes it)


def deploy_one(system: str, *fixtures: dict, **overrides) -> Run:
    return deploy({system: host_facts(system, *fixtures, **overrides)})[system]


# -- Debian and Ubuntu: apt, sites-available + sites-enabled, www-data --------------

APT_INSTALL = ('DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::="--force-confdef" '
               '-o Dpkg::Options::="--force-confold" install --no-install-recommends -o DPkg::Lock::Timeout=300 ')


@pytest.mark.parametrize(("system", "name", "pcre"), [
    ("debian12", "Debian 12 (bookworm)", "libpcre3-dev"),
    ("debian13", "Debian 13 (trixie)", "libpcre2-dev"),
    ("ubuntu2204", "Ubuntu 22.04 LTS (jammy)", "libpcre3-dev"),
    ("ubuntu2404", "Ubuntu 24.04 LTS (noble)", "libpcre2-dev"),
])
def test_debian_family(system, name, pcre):
    assert platform.detect(_FactHost(distro(system))).name == name
    run = deploy_one(system)
    packages = f"curl ca-certificates logrotate python3 python3-venv python3-dev build-essential libssl-dev {pcre} nginx"
    assert run.named("System packages") == {
        "System packages | Refresh the package index if older than apt_cache_valid_time": [
            "apt-get update", "touch /var/lib/apt/periodic/update-success-stamp"],
        f"System packages | Install {packages.replace(' ', ', ')}": [APT_INSTALL + packages],
    }
    assert run.changed["App user and directories | Let nginx (www-data) use the socket as a member of greeting"] == [
        "usermod -a -G greeting www-data"]
    assert run.changed["nginx sites | Write the site /etc/nginx/sites-available/greeting.conf"][-2:] == [
        "upload /etc/nginx/sites-available/greeting.conf", "chmod 644 /etc/nginx/sites-available/greeting.conf"]
    assert run.changed["nginx sites | Enable the site greeting"] == [
        "mkdir -p /etc/nginx/sites-enabled",
        "ln -s /etc/nginx/sites-available/greeting.conf /etc/nginx/sites-enabled/greeting.conf"]
    assert run.changed["nginx sites | Disable the distribution's default site"] == [
        "rm -f /etc/nginx/sites-enabled/default"]
    assert not [op for op in run.changed if op.startswith(("SELinux", "Firewall")) or "dnf" in op or "nginx.conf" in op]


def test_debian_family_host_with_the_packages_installs_none():
    assert deploy_one("ubuntu2404", DebInstalled=lambda packages: set(packages)).named("System packages") == {}


def test_the_static_merge_is_built_before_nginx_is_pointed_at_it():
    """A host deployed before the merge existed: it is built (from the releases already
    there) before the site naming it is written; once there, only a change of the
    release tool's settings rebuilds it (tests/tool/test_static_assets.py)."""
    names = list(deploy_one("debian12").changed)
    build = "Release | Build the static files nginx serves (the live release's, then the kept ones')"
    assert names.index(build) < names.index("nginx sites | Write the site /etc/nginx/sites-available/greeting.conf")
    built = deploy_one("debian12",
                       Link=lambda path: {"link_target": "build-1"} if path.endswith("/assets/live") else None)
    assert build not in built.changed
    # Only when the tool's settings change (here they do: nothing is on this mocked host).
    rebuild = "Release | Rebuild the static files nginx serves (the tool's settings changed)"
    assert rebuild in built.changed and rebuild not in names


def test_behind_balancers_uwsgi_gets_its_link_to_the_static_merge():
    facts = {name: host_facts("debian12") for name in ("web1", "lb1")}
    runs = deploy(facts, groups={"app_servers": ["web1"], "load_balancers": ["lb1"]},
                  host_data={"web1": {"private_address": "10.0.0.11"}, "lb1": {"private_address": "10.0.0.2"}})
    [link] = [commands for name, commands in runs["web1"].changed.items() if name ==
              "Release | Link /srv/greeting/assets/url/static to the static files served"]
    assert "ln -s /srv/greeting/assets/live /srv/greeting/assets/url/static" in link
    assert not [name for name in runs["lb1"].changed if "assets" in name]


def test_uwsgi_build_read_from_its_cflags():
    # `uwsgi --cflags` of a build with PCRE and SSL, and of one without (abridged)
    with_both = [('-O2 -I. -Wall -D_LARGEFILE_SOURCE -DUWSGI_HAS_IFADDRS -DUWSGI_PCRE -DUWSGI_ROUTING '
                  '-DUWSGI_VERSION="\\"2.0.31\\"" -DUWSGI_VERSION_BASE="2" -DUWSGI_VERSION_MAJOR="0" -DUWSGI_SSL '
                  '-DUWSGI_PLUGIN_DIR="\\".\\""')]
    assert UwsgiBuild().process(with_both) == UwsgiBuildInfo("2.0.31", pcre=True, ssl=True)
    without = ['-O2 -DUWSGI_VERSION="\\"2.0.28\\"" -DUWSGI_VERSION_BASE="2"']
    assert UwsgiBuild().process(without) == UwsgiBuildInfo("2.0.28", pcre=False, ssl=False)
    assert UwsgiBuild().process(["none"]) is None  # no uWSGI in the venv
    assert UwsgiBuild().process([]) is None  # one that cannot say: rebuilt


def test_debian_missing_packages_as_dpkg_reports_them():
    # dpkg-query's answer on a Debian 12 host with some of them: nginx removed but
    # its config kept (rc), curl held at its version (hi), libpcre3-dev unknown
    # (only on stderr), logrotate not mentioned at all.
    output = ["ii  ca-certificates", "hi  curl", "rc  nginx", "ii  python3", "ii  python3-venv",
              "ii  python3-dev", "ii  build-essential", "ii  libssl-dev"]
    installed = DebInstalled().process(output)
    assert installed == {"ca-certificates", "curl", "python3", "python3-venv", "python3-dev", "build-essential",
                         "libssl-dev"}
    run = deploy_one("debian12", DebInstalled=lambda packages: installed)
    assert list(run.named("System packages")) == [
        "System packages | Refresh the package index if older than apt_cache_valid_time",
        "System packages | Install logrotate, libpcre3-dev, nginx"]  # in the deploy's own order


# -- Rocky and Alma 9: dnf, conf.d, nginx, SELinux, firewalld -----------------------

RHEL_PACKAGES = "curl ca-certificates logrotate policycoreutils-python-utils python3 python3-devel gcc pcre2-devel openssl-devel nginx"
SELINUX_ENFORCING = {
    "SELinux | Label /opt/pyinfra-flask/uwsgi-2.0.31/bin bin_t (SELinux file context rule)": [
        "semanage fcontext -a -t bin_t '/opt/pyinfra-flask/uwsgi-2.0.31/bin(/.*)?'"],
    "SELinux | Label /srv/greeting/releases httpd_sys_content_t (SELinux file context rule)": [
        "semanage fcontext -a -t httpd_sys_content_t '/srv/greeting/releases(/.*)?'"],
    "SELinux | Label /srv/greeting/assets httpd_sys_content_t (SELinux file context rule)": [
        "semanage fcontext -a -t httpd_sys_content_t '/srv/greeting/assets(/.*)?'"],
    "SELinux | Label /run/greeting httpd_var_run_t (SELinux file context rule)": [
        "semanage fcontext -a -t httpd_var_run_t '/run/greeting(/.*)?'"],
    "SELinux | Relabel /opt/pyinfra-flask/uwsgi-2.0.31/bin, /srv/greeting/releases, /srv/greeting/assets, /run/greeting by those rules (restorecon)": [
        "restorecon -R -v -i /opt/pyinfra-flask/uwsgi-2.0.31/bin /srv/greeting/releases /srv/greeting/assets /run/greeting"],
    "SELinux | Let nginx connect to uWSGI's unix socket (policy module pyinfra_flask_nginx_uwsgi)": [(
        'dir=$(mktemp -d) && printf "%s\\n" '
        "'(allow httpd_t unconfined_service_t (unix_stream_socket (connectto getattr)))' "
        '> "$dir/pyinfra_flask_nginx_uwsgi.cil" && semodule -i "$dir/pyinfra_flask_nginx_uwsgi.cil"; '
        'status=$?; rm -rf "$dir"; exit $status')],
}
FIREWALL_80 = {"Firewall | Open 80/tcp in firewalld (permanently, then reload)": [
    "firewall-cmd --permanent --add-port=80/tcp", "firewall-cmd --reload"]}


@pytest.mark.parametrize(("system", "name"), [("rocky9", "Rocky Linux 9"), ("alma9", "AlmaLinux 9")])
def test_rhel_family(system, name):
    assert platform.detect(_FactHost(distro(system))).name == name
    run = deploy_one(system)
    assert run.named("System packages") == {
        f"System packages | Install {RHEL_PACKAGES.replace(' ', ', ')}": [f"dnf install -y {RHEL_PACKAGES}"]}
    assert run.changed["App user and directories | Let nginx (nginx) use the socket as a member of greeting"] == [
        "usermod -a -G greeting nginx"]
    # conf.d is included by nginx itself: the site is written there, and linked nowhere.
    assert run.changed["nginx sites | Write the site /etc/nginx/conf.d/greeting.conf"][-2:] == [
        "upload /etc/nginx/conf.d/greeting.conf", "chmod 644 /etc/nginx/conf.d/greeting.conf"]
    assert not [op for op in run.changed if "sites-" in op or "Enable the site" in op]
    assert "cp -p /etc/nginx/conf.d/greeting.conf /etc/nginx/conf.d/.greeting.conf.last-good" in run.changed[
        "nginx sites | Check the new nginx config (nginx -t) before it is loaded"][0]
    # nginx.conf's own default site is disabled before ours is written.
    names = list(run.changed)
    default_site = "nginx sites | Disable the package's default site in /etc/nginx/nginx.conf (commented out in place)"
    assert names.index(default_site) == names.index("nginx sites | Write the site /etc/nginx/conf.d/greeting.conf") - 1
    [script] = run.changed[default_site]
    assert script.startswith("python3 - disable /etc/nginx/nginx.conf <<'PYINFRA_FLASK_SCRIPT'\n")
    assert script.endswith((REPO_ROOT / "files/nginx-default-server.py").read_text() + "PYINFRA_FLASK_SCRIPT")
    assert run.named("SELinux") == SELINUX_ENFORCING
    assert run.named("Firewall") == FIREWALL_80
    # Labels and the rule are in place before uWSGI starts and nginx serves.
    assert names.index(list(SELINUX_ENFORCING)[-1]) < names.index(
        "nginx sites | Reload nginx (its config or the socket group changed)")
    assert not [op for op in run.changed if "apt" in op]


def test_rhel_permissive_gets_the_same_rules():
    assert deploy_one("rocky9", SelinuxMode="permissive").named("SELinux") == SELINUX_ENFORCING


def test_rhel_without_selinux_or_firewalld_gets_neither():
    run = deploy_one("rocky9", SelinuxMode="disabled", FirewalldPort=lambda port: None)
    assert run.named("SELinux") == {}
    assert run.named("Firewall") == {}


def test_rhel_converged_host_changes_nothing_of_its_own():
    run = deploy_one("alma9", CONVERGED_RHEL)
    assert [name for name in run.changed if name.startswith(("System packages", "SELinux", "Firewall"))
            or "default site" in name] == []
    # Accounts already as wanted: neither user operation is added (each would read every account).
    assert [name for name in run.changed if "system user" in name or "member of" in name] == []


def test_rhel_relabels_when_labels_drifted_or_uwsgi_was_reinstalled():
    drifted = deploy_one("rocky9", CONVERGED_RHEL, Mislabelled=lambda paths: [
        "Would relabel /run/greeting from system_u:object_r:var_run_t:s0 to system_u:object_r:httpd_var_run_t:s0"])
    assert drifted.named("SELinux") == {
        "SELinux | Relabel /opt/pyinfra-flask/uwsgi-2.0.31/bin, /srv/greeting/releases, /srv/greeting/assets, "
        "/run/greeting by those rules (restorecon)": [
            "restorecon -R -v -i /opt/pyinfra-flask/uwsgi-2.0.31/bin /srv/greeting/releases /srv/greeting/assets "
            "/run/greeting"]}
    # uWSGI (re)installed, so its venv may be new: relabelled although nothing else changed.
    reinstalled = deploy_one("rocky9", CONVERGED_RHEL, UwsgiBuild=None)
    assert list(reinstalled.named("SELinux")) == [
        "SELinux | Relabel /opt/pyinfra-flask/uwsgi-2.0.31/bin, /srv/greeting/releases, /srv/greeting/assets, "
        "/run/greeting by those rules (restorecon)"]


def test_rhel_curl_minimal_counts_as_curl():
    # rpm's own answer on a minimal Rocky 9: curl-minimal provides `curl`.
    output = ["curl-minimal-7.76.1-29.el9_4.x86_64", "ca-certificates-2024.2.69_v8.0.303-91.4.el9_4.noarch",
              "no package provides policycoreutils-python-utils", "python3-3.9.18-3.el9.x86_64",
              "no package provides python3-devel", "no package provides gcc", "no package provides pcre2-devel",
              "no package provides nginx"]
    missing = RpmMissing().process(output)
    assert missing == ["policycoreutils-python-utils", "python3-devel", "gcc", "pcre2-devel", "nginx"]
    run = deploy_one("rocky9", RpmMissing=lambda packages: list(missing))
    assert run.named("System packages") == {
        f"System packages | Install {', '.join(missing)}": [f"dnf install -y {' '.join(missing)}"]}


def test_rhel_epel_only_for_packages_that_need_it(monkeypatch):
    rocky = platform.SUPPORTED[("Rocky Linux", 9)]
    assert rocky.epel_packages == ()  # nothing the deploy needs comes from EPEL today
    monkeypatch.setitem(platform.SUPPORTED, ("Rocky Linux", 9), replace(rocky, epel_packages=("nginx",)))
    run = deploy_one("rocky9")
    packages = RHEL_PACKAGES.split()
    assert run.named("System packages") == {
        "System packages | Enable EPEL (for nginx)": ["dnf install -y epel-release"],
        f"System packages | Install {', '.join(packages)}": [f"dnf install -y {' '.join(packages)}"]}
    with_epel = deploy_one("rocky9", RpmMissing=lambda packages: [p for p in packages if p != "epel-release"])
    assert list(with_epel.named("System packages")) == [f"System packages | Install {', '.join(packages)}"]


@pytest.mark.parametrize(("port", "ports", "expected"), [
    (8080, {"tcp": {80: "http_port_t", 8080: "http_cache_port_t"}}, {}),
    (8081, {"tcp": {80: "http_port_t"}}, {"SELinux | Let nginx listen on port 8081 (SELinux port type http_port_t)": [
        "semanage port -a -t http_port_t -p tcp 8081 2>/dev/null || semanage port -m -t http_port_t -p tcp 8081"]}),
    # semanage not installed yet (a first run): only port 80 is known to be nginx's.
    (8080, {}, {"SELinux | Let nginx listen on port 8080 (SELinux port type http_port_t)": [
        "semanage port -a -t http_port_t -p tcp 8080 2>/dev/null || semanage port -m -t http_port_t -p tcp 8080"]}),
])
def test_rhel_nginx_port_selinux_type(port, ports, expected):
    facts = host_facts("rocky9", CONVERGED_RHEL, SEPorts=ports)
    run = deploy({"rocky9": facts}, nginx_port=port)["rocky9"]
    assert run.named("SELinux") == expected


def test_rhel_load_balanced():
    """A balancer in front of two app servers, all on Rocky 9: nginx reaches uWSGI
    over TCP (the SELinux boolean, no socket rules), the app servers open uWSGI's
    port to the balancer and run no nginx."""
    facts = {name: host_facts("rocky9", SEBoolean=lambda boolean: "off") for name in ("web1", "web2", "lb1")}
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA)
    assert runs["lb1"].named("SELinux") == {
        "SELinux | Let nginx connect to uWSGI over TCP (httpd_can_network_connect)": [
            "setsebool -P httpd_can_network_connect on"]}
    assert runs["lb1"].named("Firewall") == FIREWALL_80
    assert "Load balancer | nginx sites | Write the site /etc/nginx/conf.d/greeting.conf" in runs["lb1"].changed
    assert runs["lb1"].named("System packages") == {
        "System packages | Install curl, ca-certificates, logrotate, policycoreutils-python-utils, python3, nginx": [
            "dnf install -y curl ca-certificates logrotate policycoreutils-python-utils python3 nginx"]}
    for web in ("web1", "web2"):
        assert runs[web].named("SELinux") == {
            "SELinux | Label /opt/pyinfra-flask/uwsgi-2.0.31/bin bin_t (SELinux file context rule)": [
                "semanage fcontext -a -t bin_t '/opt/pyinfra-flask/uwsgi-2.0.31/bin(/.*)?'"],
            "SELinux | Relabel /opt/pyinfra-flask/uwsgi-2.0.31/bin by those rules (restorecon)": [
                "restorecon -R -v -i /opt/pyinfra-flask/uwsgi-2.0.31/bin"]}
        # uWSGI's port is open to the balancer's address only, never to everyone.
        assert runs[web].named("Firewall") == {FIREWALLD_LB1: [
            "firewall-cmd --permanent --add-rich-rule="
            "'rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"3031\" protocol=\"tcp\" accept'",
            "firewall-cmd --reload"]}
        assert not [op for op in runs[web].changed if op.startswith("nginx site |")]
        assert not [op for op in runs[web].changed if op.startswith("Firewall") and "nft" in op]


LB_GROUPS = {"app_servers": ["web1", "web2"], "load_balancers": ["lb1"]}
LB_DATA = {"web1": {"private_address": "10.0.0.11"}, "web2": {"private_address": "10.0.0.12"},
           "lb1": {"private_address": "10.0.0.2"}}
FIREWALLD_LB1 = ("Firewall | Let only the balancers (@fake/lb1) reach uWSGI's port 3031 in firewalld "
                 "(rich rules, permanently, then reload)")


def _rich(address: str, port: int = 3031) -> str:
    family = "ipv6" if ":" in address else "ipv4"
    return f'rule family="{family}" source address="{address}" port port="{port}" protocol="tcp" accept'


def _firewalld(rules: list[str], open_ports: list[int] = (), runtime_rules: list[str] | None = None) -> dict:
    return {"permanent": {"rules": list(rules), "open": list(open_ports)},
            "runtime": {"rules": list(rules if runtime_rules is None else runtime_rules), "open": list(open_ports)}}


@pytest.mark.parametrize(("access", "expected"), [
    # As the deploy left it: nothing to do.
    (_firewalld([_rich("10.0.0.2"), _rich("10.0.0.3", 8080)]), None),
    # An earlier deploy opened the port to everyone; lb1 replaced an old balancer,
    # whose rule goes; a user's rule for another port is left alone.
    (_firewalld([_rich("10.0.0.9"), _rich("10.0.0.3", 8080), 'rule family="ipv4" source address="10.0.0.9" '
                 'port port="3031" protocol="tcp" log prefix="x" accept'], open_ports=[3031]), [
        "firewall-cmd --permanent --remove-port=3031/tcp",
        "firewall-cmd --permanent --remove-rich-rule="
        "'rule family=\"ipv4\" source address=\"10.0.0.9\" port port=\"3031\" protocol=\"tcp\" accept'",
        "firewall-cmd --permanent --add-rich-rule="
        "'rule family=\"ipv4\" source address=\"10.0.0.2\" port port=\"3031\" protocol=\"tcp\" accept'",
        "firewall-cmd --reload"]),
    # Right permanently, lost at runtime (e.g. `firewall-cmd --remove-rich-rule` without --permanent).
    (_firewalld([_rich("10.0.0.2")], runtime_rules=[]), ["firewall-cmd --reload"]),
])
def test_rhel_firewalld_rules_follow_the_balancers(access, expected):
    facts = {name: host_facts("rocky9", CONVERGED_RHEL, FirewalldAccess=lambda ports: access)
             for name in ("web1", "web2", "lb1")}
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA)
    assert runs["web1"].named("Firewall") == ({FIREWALLD_LB1: expected} if expected else {})


def test_rhel_without_firewalld_behind_a_balancer_gets_the_nftables_table():
    facts = {name: host_facts("alma9", SEBoolean=lambda boolean: "off", FirewalldPort=lambda port: None,
                              FirewalldAccess=lambda ports: None) for name in ("web1", "web2", "lb1")}
    runs = deploy(facts, groups=LB_GROUPS, host_data=LB_DATA)
    assert "nftables" in list(runs["web1"].named("System packages"))[0]
    assert "ip saddr 10.0.0.2 accept  # @fake/lb1" in runs["web1"].uploads[NFT_RULES]
    assert "Firewall | Load the changed uWSGI firewall rules (nft -c first)" in runs["web1"].changed
    assert runs["lb1"].named("Firewall") == {}


NFT_RULES = "/etc/pyinfra-flask/uwsgi-firewall.nft"


@pytest.mark.parametrize("system", ["debian12", "debian13", "ubuntu2204", "ubuntu2404"])
def test_debian_family_behind_balancers_gets_the_nftables_table(system):
    """Two balancers, one reached over IPv6; two apps, each on its own uWSGI port."""
    facts = {name: host_facts(system) for name in ("web1", "lb1", "lb2")}
    runs = deploy(facts, groups={"app_servers": ["web1"], "load_balancers": ["lb1", "lb2"]},
                  host_data={"web1": {"private_address": "10.0.0.11", "apps": [
                      {"app_name": "greeting"}, {"app_name": "shop", "url_prefix": "/shop", "uwsgi_socket": "10.0.0.11:3032"}]},
                             "lb1": {"private_address": "10.0.0.2"}, "lb2": {"private_address": "fd00::2"}})
    web = runs["web1"]
    [install] = [name for name in web.named("System packages") if "Install" in name]
    assert install.endswith(", nftables") and "nginx" not in install
    assert web.named("Firewall") == {
        f"Firewall | Write the uWSGI firewall rules {NFT_RULES} (port 3031, 3032: balancers only)": [
            "mkdir -p /etc/pyinfra-flask", f"upload {NFT_RULES}", f"chmod 644 {NFT_RULES}"],
        "Firewall | Write the systemd unit /etc/systemd/system/pyinfra-flask-firewall.service (loads the rules at boot)": [
            "mkdir -p /etc/systemd/system", "upload /etc/systemd/system/pyinfra-flask-firewall.service",
            "chmod 644 /etc/systemd/system/pyinfra-flask-firewall.service"],
        "Firewall | Load them again whenever nftables.service (re)loads its ruleset": [
            "mkdir -p /etc/systemd/system/nftables.service.d",
            "upload /etc/systemd/system/nftables.service.d/pyinfra-flask.conf",
            "chmod 644 /etc/systemd/system/nftables.service.d/pyinfra-flask.conf"],
        "Firewall | Reload systemd (the firewall's units changed)": ["systemctl daemon-reload"],
        "Firewall | Load the changed uWSGI firewall rules (nft -c first)": [
            f"/usr/sbin/nft -c -f {NFT_RULES}", "systemctl reload-or-restart pyinfra-flask-firewall.service"],
        "Firewall | Keep pyinfra-flask-firewall.service active and started at boot": [
            "systemctl start pyinfra-flask-firewall.service", "systemctl enable pyinfra-flask-firewall.service"],
    }
    rules = web.uploads[NFT_RULES]
    assert "tcp dport { 3031, 3032 } jump uwsgi" in rules
    assert "ip saddr 10.0.0.2 accept  # @fake/lb1" in rules and "ip6 saddr fd00::2 accept  # @fake/lb2" in rules
    # Only our own table is replaced, never the whole ruleset.
    assert "flush ruleset" not in rules and "table inet pyinfra_flask\ndelete table inet pyinfra_flask\n" in rules
    unit = web.uploads["/etc/systemd/system/pyinfra-flask-firewall.service"]
    assert f"ExecReload=/usr/sbin/nft -f {NFT_RULES}" in unit and "WantedBy=sysinit.target" in unit
    for lb in ("lb1", "lb2"):
        assert not [op for op in runs[lb].changed if "nft" in op or op.startswith("Firewall")]
    nft = shutil.which("nft")
    if nft and os.geteuid() == 0:
        # nft's own check of the rules as written (it loads nothing).
        checked = subprocess.run([nft, "-c", "-f", "-"], input=rules, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr


def test_debian_host_no_longer_behind_balancers_loses_the_table():
    run = deploy_one("debian12", File=lambda path: {"size": 1, "mode": 644} if path == NFT_RULES else None)
    names = list(run.changed)
    # Once uWSGI is back on its unix socket, never before.
    assert names.index("Health check | Check GET / through nginx answers 200") < names.index(
        "Firewall | Remove the uWSGI firewall (no load balancers any more, so no TCP socket)")
    assert run.named("Firewall") == {
        "Firewall | Remove the uWSGI firewall (no load balancers any more, so no TCP socket)": [
            "systemctl disable --now pyinfra-flask-firewall.service",
            "rm -f /etc/systemd/system/pyinfra-flask-firewall.service "
            f"/etc/systemd/system/nftables.service.d/pyinfra-flask.conf {NFT_RULES}",
            "systemctl daemon-reload"]}


def test_balancer_without_private_address_stops_the_run_before_any_host_is_touched():
    facts = {name: host_facts("debian12") for name in ("web1", "web2", "lb1")}
    data = {**LB_DATA, "lb1": {}}
    with pytest.raises(topology.TopologyError) as error:
        deploy(facts, groups=LB_GROUPS, host_data=data)
    assert str(error.value) == (
        "Balancer '@fake/lb1' has no private_address: set it to the address the app servers see its connections "
        "come from (only the balancers may reach their uWSGI); nothing was changed.")


# -- Anything else: stopped before any operation -------------------------------------

@pytest.mark.parametrize(("system", "found"), [
    ("debian11", "Debian 11"),
    ("ubuntu2310", "Ubuntu 23.10"),
    ("centos7", "CentOS 7"),
    ("arch", "Arch Linux"),
    (None, "an unknown system"),
])
def test_unsupported_system_stops_before_any_operation(system, found):
    facts = host_facts("debian12", LinuxDistribution=distro(system) if system else LinuxDistribution.default())
    inventory = Inventory((["@fake/box"], {"fake_delay": 0}))
    state = State(inventory, Config())
    with ctx_state.use(state), patch.object(Host, "get_fact", lambda host, cls, *a, **k: (
            facts[cls.__name__] if cls.__name__ in facts else cls().default())):
        state.set_stage(StateStage.Connect)
        connect_all(state)
        with pytest.raises(platform.UnsupportedSystem) as error:
            load_deploy(state)
    assert str(error.value) == (f"Host '@fake/box' runs {found}, which this deploy does not support "
                                f"(supported: {SUPPORTED}); nothing was changed.")
    box = inventory.get_host("@fake/box")
    assert box.op_hash_order == [] and not state.ops.get(box)
    assert box.connector.executed_commands == []


class _FactHost:
    """Just enough of a host for platform.detect."""

    name = "box"

    def __init__(self, distribution):
        self.distribution = distribution

    def get_fact(self, cls):
        assert cls is LinuxDistribution
        return self.distribution


# -- The shell and Python the new facts and operations run on the host -------------

RHEL9_NGINX_CONF = """\
user nginx;
worker_processes auto;
error_log /var/log/nginx/error.log;
pid /run/nginx.pid;

include /usr/share/nginx/modules/*.conf;

events {
    worker_connections 1024;
}

http {
    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';

    access_log  /var/log/nginx/access.log  main;
    include             /etc/nginx/mime.types;
    default_type        application/octet-stream;

    # Load modular configuration files from the /etc/nginx/conf.d directory.
    include /etc/nginx/conf.d/*.conf;

    upstream backends { server 10.0.0.1:3031; }

    server {
        listen       80;
        listen       [::]:80;
        server_name  _;
        root         /usr/share/nginx/html;

        # Load configuration files for the default server block.
        include /etc/nginx/default.d/*.conf;

        error_page 404 /404.html;
        location = /404.html {
        }
    }

# Settings for a TLS enabled server.
#
#    server {
#        listen       443 ssl http2;
#    }
}

stream {
    server { listen 12345; proxy_pass 10.0.0.1:12345; }
}
"""
SCRIPT = REPO_ROOT / "files/nginx-default-server.py"


def _default_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-", *args], input=SCRIPT.read_text(), capture_output=True, text=True,
                          check=False)


def test_default_site_in_nginx_conf_is_commented_out_in_place(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(RHEL9_NGINX_CONF)
    assert _default_server("check", str(conf)).stdout == "active\n"
    done = _default_server("disable", str(conf), "true")
    assert done.returncode == 0, done.stderr
    lines = RHEL9_NGINX_CONF.splitlines(keepends=True)
    first = lines.index("    server {\n")
    last = first + lines[first:].index("    }\n")
    expected = lines[:first] + [f"#disabled-by-pyinfra-flask# {line}" for line in lines[first:last + 1]] + lines[last + 1:]
    assert conf.read_text() == "".join(expected)  # the upstream's and stream's `server` untouched
    assert _default_server("check", str(conf)).stdout == "none\n"
    again = _default_server("disable", str(conf), "true")
    assert (again.returncode, conf.read_text()) == (0, "".join(expected))


def test_default_site_put_back_when_nginx_rejects_the_result(tmp_path):
    conf = tmp_path / "nginx.conf"
    el7 = RHEL9_NGINX_CONF.replace("listen       80;", "listen       80 default_server;")
    conf.write_text(el7)
    refused = _default_server("disable", str(conf), "sh", "-c", "echo 'nginx: [emerg] test failed' >&2; exit 1")
    assert refused.returncode == 1
    assert "nginx: [emerg] test failed" in refused.stderr and "put back as it was" in refused.stderr
    assert conf.read_text() == el7
    assert _default_server("check", str(tmp_path / "absent.conf")).stdout == "missing\n"


FIREWALL_CMD_STUB = """#!/bin/sh
# firewall-cmd as far as the fact uses it, its state from FW_* variables.
permanent=
for arg in "$@"; do
    case "$arg" in
        --state) [ "$FW_RUNNING" = yes ] && { echo running; exit 0; }; echo "not running"; exit 252 ;;
        --permanent) permanent=1 ;;
    esac
done
if [ -n "$permanent" ]; then ports=$FW_PERMANENT_PORTS services=$FW_PERMANENT_SERVICES rich=$FW_PERMANENT_RICH
else ports=$FW_PORTS services=$FW_SERVICES rich=$FW_RICH; fi
for arg in "$@"; do
    case "$arg" in
        --list-rich-rules) [ -n "$rich" ] && printf '%s\n' "$rich"; exit 0 ;;
        --query-port=*) for p in $ports; do [ "$p" = "${arg#--query-port=}" ] && { echo yes; exit 0; }; done
                        echo no; exit 1 ;;
        --list-services) echo "$services"; exit 0 ;;
        --info-service=http) printf 'http\\n  ports: 80/tcp\\n  protocols: \\n'; exit 0 ;;
        --info-service=ssh) printf 'ssh\\n  ports: 22/tcp\\n  protocols: \\n'; exit 0 ;;
        --info-service=http-alt) printf 'http-alt\\n  ports: 8080/tcp\\n'; exit 0 ;;
        --info-service=*) printf '%s\\n  ports: \\n' "${arg#--info-service=}"; exit 0 ;;
    esac
done
exit 2
"""


@pytest.mark.parametrize(("port", "firewall", "expected"), [
    (80, {"FW_RUNNING": "no"}, None),
    (80, {}, True),
    (80, {"FW_PORTS": ""}, False),  # opened permanently, lost at runtime
    (80, {"FW_PERMANENT_PORTS": "", "FW_PORTS": "", "FW_PERMANENT_SERVICES": "ssh http",
          "FW_SERVICES": "ssh http"}, True),
    (8080, {"FW_PERMANENT_SERVICES": "ssh http", "FW_SERVICES": "ssh http"}, False),
    (80, {"FW_PERMANENT_PORTS": "8080/tcp", "FW_PORTS": "8080/tcp"}, False),
    (80, {"FW_PERMANENT_PORTS": "", "FW_PORTS": "", "FW_PERMANENT_SERVICES": "http-alt",
          "FW_SERVICES": "http-alt"}, False),
    (3031, {"FW_PERMANENT_PORTS": "80/tcp 3031/tcp", "FW_PORTS": "3031/tcp 80/tcp"}, True),
])
def test_firewalld_port_fact(tmp_path, port, firewall, expected):
    stub = tmp_path / "firewall-cmd"
    stub.write_text(FIREWALL_CMD_STUB)
    stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "FW_RUNNING": "yes", "FW_PERMANENT_PORTS": "80/tcp",
           "FW_PORTS": "80/tcp", "FW_PERMANENT_SERVICES": "ssh", "FW_SERVICES": "ssh", **firewall}
    fact = FirewalldPort()
    out = subprocess.run(["sh", "-c", fact.command(port=port)], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert fact.process(out.stdout.splitlines()) is expected


def test_firewalld_absent_is_not_running(tmp_path):
    fact = FirewalldPort()
    out = subprocess.run(["sh", "-c", fact.command(port=80)], env={"PATH": str(tmp_path) + ":/usr/bin:/bin"},
                         capture_output=True, text=True, check=False)
    assert fact.process(out.stdout.splitlines()) is None



def test_firewalld_access_fact(tmp_path):
    stub = tmp_path / "firewall-cmd"
    stub.write_text(FIREWALL_CMD_STUB)
    stub.chmod(0o755)
    lb1, old = _rich("10.0.0.2"), _rich("10.0.0.9")
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "FW_RUNNING": "yes", "FW_PERMANENT_PORTS": "80/tcp 3031/tcp",
           "FW_PORTS": "80/tcp", "FW_PERMANENT_RICH": f"{lb1}\n{old}", "FW_RICH": lb1}
    fact = FirewalldAccess()
    out = subprocess.run(["sh", "-c", fact.command(ports=(3031, 3032))], env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert fact.process(out.stdout.splitlines()) == {"permanent": {"rules": [lb1, old], "open": [3031]},
                                                     "runtime": {"rules": [lb1], "open": []}}
    stopped = subprocess.run(["sh", "-c", fact.command(ports=(3031,))], env={**env, "FW_RUNNING": "no"},
                             capture_output=True, text=True, check=False)
    assert fact.process(stopped.stdout.splitlines()) is None
