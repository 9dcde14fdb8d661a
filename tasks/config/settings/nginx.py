"""The settings of one concern: nginx, TLS with automatic HTTPS (ACME), and load balancing (tasks/steps/nginx.py, tasks/steps/acme.py, tasks/roles/balancer.py).

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tasks.config.settings.values import AbsPath, Port, SIZE_RE, ServerName


class NginxSettings(BaseModel):
    """nginx, TLS with automatic HTTPS (ACME), and load balancing (tasks/steps/nginx.py, tasks/steps/acme.py, tasks/roles/balancer.py)."""

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

    # ACME (automatic HTTPS): checked by tasks/steps/acme.py `check`, see docs/https.md.
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
