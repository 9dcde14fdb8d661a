"""SELinux on RHEL-family hosts: let systemd and nginx use what this deploy puts
outside the distribution's usual paths, by file labels and one narrow policy rule.

SELinux itself stays as the admin set it: this deploy never runs setenforce. The
rules are set up in permissive mode too, so switching to enforcing later does not
break the app; with SELinux disabled there is nothing to do (and semanage would
refuse).
"""

import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.selinux import SEPorts
from pyinfra.operations import selinux, server

from tasks.steps import acme

# The port types nginx (httpd_t) may listen on: 80, 443, 8080, ... in the targeted policy.
HTTPD_PORT_TYPES = ("http_port_t", "http_cache_port_t")

# systemd runs uWSGI, a bin_t program with no policy of its own, as unconfined_service_t.
# Policies before Fedora 31 (RHEL 8's) let every domain connect to such a service's
# unix sockets (`allow domain unconfined_service_t:unix_stream_socket { connectto getattr }`);
# RHEL 9's does not, which is the classic 502 "(13: Permission denied)" on the
# socket. This module gives exactly that permission back, to nginx only.
POLICY_MODULE = "pyinfra_flask_nginx_uwsgi"
POLICY = "(allow httpd_t unconfined_service_t (unix_stream_socket (connectto getattr)))"


class SelinuxMode(FactBase):
    """"enforcing", "permissive" or "disabled" (also when SELinux is not installed)."""

    @staticmethod
    def default() -> str:
        return "disabled"

    def command(self) -> str:
        return "getenforce 2>/dev/null || echo Disabled"

    def process(self, output: list[str]) -> str:
        return output[-1].strip().lower() if output else "disabled"


class SelinuxModules(FactBase):
    """The names of the installed policy modules."""

    default = set

    def command(self) -> str:
        return "semodule -l 2>/dev/null || true"

    def process(self, output: list[str]) -> set[str]:
        return {line.split()[0] for line in output if line.strip()}


class Mislabelled(FactBase):
    """What restorecon would relabel under the paths: empty when every label
    there matches the rules."""

    default = list

    def command(self, paths) -> str:
        return f"restorecon -R -n -v -i {' '.join(map(shlex.quote, paths))} 2>&1 || true"

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line.strip()]


@deploy("SELinux")
def allow(platform, s, app: bool = True, nginx: bool = True, relabel_after=()):
    """What this host runs needs: uWSGI (`app`), nginx in front of it or of the
    app servers (`nginx`). `relabel_after`: operations that may recreate labelled
    paths (uWSGI's venv)."""
    if platform.family != "rhel" or host.get_fact(SelinuxMode) == "disabled":
        return

    labels = {}
    if app:
        # systemd starts only programs labelled as programs; pip put uWSGI under
        # /srv (var_t), which would fail with 203/EXEC.
        labels[f"{s.uwsgi_venv}/bin"] = "bin_t"
    if app and nginx and s.app_static_dir:
        # nginx serves the static files straight from the releases (through root's
        # merge of them, assets/); new ones are made inside and take its label.
        labels[f"{s.app_root}/releases"] = "httpd_sys_content_t"
        if s.release_static_dir:
            labels[f"{s.app_root}/assets"] = "httpd_sys_content_t"
    unix_socket = app and nginx and not s.uwsgi_tcp
    if unix_socket:
        # The socket's directory: systemd makes it (RuntimeDirectory) with the
        # label these rules give, and the socket inherits it; nginx may write to
        # httpd_var_run_t sockets.
        labels[s.socket_dir] = "httpd_var_run_t"

    if nginx and s.tls_acme:
        # certbot (started by systemd) and the challenge webroot nginx serves; tasks/steps/acme.py
        # relabels them after it creates them.
        labels.update(acme.selinux_labels())

    mappings = [
        selinux.file_context_mapping(
            name=f"Label {path} {se_type} (SELinux file context rule)",
            target=f"{path}(/.*)?",
            se_type=se_type,
        )
        for path, se_type in labels.items()
    ]
    if labels:
        paths = tuple(labels)
        mislabelled = host.get_fact(Mislabelled, paths=paths)
        triggers = [*mappings, *(op for op in relabel_after if op)]
        server.shell(
            name=f"Relabel {', '.join(paths)} by those rules (restorecon)",
            commands=[f"restorecon -R -v -i {' '.join(map(shlex.quote, paths))}"],
            _if=lambda: bool(mislabelled) or any(op.did_change() for op in triggers),
        )

    if unix_socket and POLICY_MODULE not in host.get_fact(SelinuxModules):
        cil = shlex.quote(POLICY)
        server.shell(
            name=f"Let nginx connect to uWSGI's unix socket (policy module {POLICY_MODULE})",
            commands=[(
                f'dir=$(mktemp -d) && printf "%s\\n" {cil} > "$dir/{POLICY_MODULE}.cil" && '
                f'semodule -i "$dir/{POLICY_MODULE}.cil"; status=$?; rm -rf "$dir"; exit $status'
            )],
        )

    if nginx and (not app or s.uwsgi_tcp):
        # nginx passes to uWSGI over TCP (a balancer, or uwsgi_socket set to an
        # address): httpd_t may connect to other ports only with this boolean.
        selinux.boolean(
            name="Let nginx connect to uWSGI over TCP (httpd_can_network_connect)",
            bool_name="httpd_can_network_connect",
            value=selinux.Boolean.ON,
            persistent=True,
        )

    if nginx:
        # Until semanage is installed (a first run), only port 80's type is known.
        known = host.get_fact(SEPorts).get("tcp")
        port_type = known.get(s.nginx_port) if known else ("http_port_t" if s.nginx_port == 80 else None)
        if port_type not in HTTPD_PORT_TYPES:
            add = f"-t http_port_t -p tcp {s.nginx_port}"
            server.shell(
                name=f"Let nginx listen on port {s.nginx_port} (SELinux port type http_port_t)",
                # -m where the policy already gives the port another type.
                commands=[f"semanage port -a {add} 2>/dev/null || semanage port -m {add}"],
            )
