"""The settings of one concern: where alerts go, and the watch on every host that sends them
(tasks/steps/watch.py, files/watch.py, docs/watch.md).

The targets (a webhook, an ntfy topic, email through SMTP) are the host's, shared by
everything that alerts: the watch on each host, and Alertmanager on a monitoring host.
Values that may hold a token or a password are never shown, not even in the line that
refuses them.

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, model_validator

from tasks.config.settings.values import EMAIL_RE, Port

# A host name or an IPv4 address, as SMTP servers are named.
SMTP_HOST_RE = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
# An environment variable's name (alert_smtp_password_from).
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
# The port each SMTP security mode listens on by default.
SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}
# Settings whose values are never shown (they may hold a token or a password).
SECRET_KEYS = ("alert_webhook_url", "alert_ntfy_url", "alert_ntfy_token", "alert_smtp_password")


def email_address(value: str) -> str:
    if not re.match(EMAIL_RE, value) or len(value) > 254:
        raise ValueError("must be an email address like 'ops@example.com'")
    return value


EmailAddress = Annotated[str, AfterValidator(email_address)]


def is_http_url(value: str) -> bool:
    """An http:// or https:// URL with a host (and a port, if any, that is one)."""
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 (a bad port raises)
    except ValueError:
        return False
    return (url.scheme in ("http", "https") and bool(url.hostname)
            and not any(c.isspace() or ord(c) < 32 for c in value))


class AlertSettings(BaseModel):
    """Where alerts go, and the watch on every host."""

    alert_webhook_url: str | None = Field(
        None, min_length=1,
        description="An `http(s)://` URL that gets each alert as a JSON POST with a `text` field (Slack's and "
        "Mattermost's incoming webhooks take it as it is; the alert's details are under `alert`). Never shown: "
        "it may hold a token.",
    )
    alert_ntfy_url: str | None = Field(
        None, min_length=1,
        description="An ntfy topic URL (`https://ntfy.sh/<topic>` or your own server's) that gets each alert "
        "as a notification. Never shown: the topic name is its password on a public server.",
    )
    alert_ntfy_token: str | None = Field(
        None, min_length=1,
        description="An ntfy access token, for a topic that needs one (sent as `Authorization: Bearer`). Never shown.",
    )
    alert_email_to: list[EmailAddress] = Field(
        [],
        description="Addresses that get each alert by email, through `alert_smtp_host`.",
    )
    alert_email_from: EmailAddress | None = Field(
        None, description="The sender of alert emails. Default: `alert_smtp_user` when it is an address.",
    )
    alert_smtp_host: Annotated[str, Field(pattern=SMTP_HOST_RE, max_length=253)] | None = Field(
        None, description="The SMTP server alert emails are sent through (needed with `alert_email_to`).",
    )
    alert_smtp_port: Port | None = Field(
        None, description="The SMTP server's port. Default: 587 with `starttls`, 465 with `tls`, 25 with `none`.",
    )
    alert_smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="`starttls` (upgrade the connection, certificate verified), `tls` (TLS from the first byte, "
        "verified) or `none` (plain text: only for a relay on the host or a private network; no login is sent "
        "over it).",
    )
    alert_smtp_user: str | None = Field(
        None, min_length=1, max_length=254, pattern=r"^[^\s\x00-\x1f]+$",
        description="The SMTP login, if the server needs one (with a password).",
    )
    alert_smtp_password: str | None = Field(
        None, min_length=1,
        description="The SMTP password. Never shown; kept on the host in a root-only file. Better: "
        "`alert_smtp_password_from`, so it is not in the inventory.",
    )
    alert_smtp_password_from: Annotated[str, Field(pattern=ENV_NAME_RE)] | None = Field(
        None,
        description="The name of an environment variable of the shell running pyinfra that holds the SMTP "
        "password (instead of `alert_smtp_password`).",
    )
    watch_interval: int = Field(
        60, ge=10, le=3600,
        description="Seconds between two runs of the watch on every host (a systemd timer): it checks the apps "
        "through the health check, their units, workers and jobs, nginx, certificates and their renewal, free "
        "disk and backup age, and alerts once when a check fails and once when it recovers (docs/watch.md).",
    )
    alert_disk_free: int = Field(
        10, ge=1, le=90,
        description="The watch alerts when the disk holding an app has less than this percentage free.",
    )
    alert_backup_max_age: int = Field(
        26, ge=1, le=24 * 400,
        description="Hours: the watch alerts when an app's newest backup is older than this (the default suits "
        "a daily schedule).",
    )

    @model_validator(mode="after")
    def _alert_targets(self):
        """The values that are never shown are judged here, so the refusal names the key alone."""
        for key in ("alert_webhook_url", "alert_ntfy_url"):
            value = getattr(self, key)
            if value is not None and not is_http_url(value):
                raise ValueError(f"{key}: must be an http:// or https:// URL (its value is not shown: it may "
                                 "hold a token)")
        if self.alert_ntfy_token is not None and not re.fullmatch(r"[\x21-\x7e]+", self.alert_ntfy_token):
            raise ValueError("alert_ntfy_token: must be printable characters without spaces (its value is not "
                             "shown)")
        if self.alert_smtp_password is not None and self.alert_smtp_password_from is not None:
            raise ValueError("alert_smtp_password_from: set it or alert_smtp_password, not both")
        if self.alert_smtp_password is not None and any(c in self.alert_smtp_password for c in "\r\n\x00"):
            raise ValueError("alert_smtp_password: must be one line (its value is not shown)")
        if self.alert_email_to:
            if self.alert_smtp_host is None:
                raise ValueError("alert_smtp_host: required with alert_email_to (the server alert emails go "
                                 "through)")
            if self.alert_email_from is None and not (self.alert_smtp_user and re.match(EMAIL_RE,
                                                                                        self.alert_smtp_user)):
                raise ValueError("alert_email_from: required with alert_email_to (unless alert_smtp_user is an "
                                 "email address)")
        has_password = self.alert_smtp_password is not None or self.alert_smtp_password_from is not None
        if has_password != (self.alert_smtp_user is not None):
            raise ValueError("alert_smtp_user: the SMTP login needs both alert_smtp_user and a password "
                             "(alert_smtp_password or alert_smtp_password_from), or neither")
        if has_password and self.alert_smtp_security == "none":
            raise ValueError("alert_smtp_security: 'none' sends the password in plain text; use 'starttls' or "
                             "'tls' with alert_smtp_user")
        return self
