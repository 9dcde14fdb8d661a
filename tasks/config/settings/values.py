"""What a setting's value may look like: the patterns, their messages for people,
the validators and the value types the parts of the schema share."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, Field

from tasks.config import reserved

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
# An email address (acme_email, the alert emails' addresses).
EMAIL_RE = r"^[^@\s'\"\\]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
# nginx sizes: `75M`, `512k`, `1g`, `0` (no limit).
SIZE_RE = r"^[0-9]+[kKmMgG]?$"
STATIC_URL_RE = r"^/([A-Za-z0-9._-]+/)*$"
VERSION_RE = r"^[0-9]+\.[0-9]+\.[0-9]+$"
REL_PATH_RE = r"^[A-Za-z0-9._/-]*$"
# Release ids: the deploying machine's UTC time, the git commit if any, the run's id.
RELEASE_ID_RE = r"^[0-9]{8}T[0-9]{6}Z(-[0-9a-f]{4,40}){0,2}$"

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


def no_dot_dot(value: str) -> str:
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address or network (CIDR), e.g. '10.0.0.0/8'") from None


def relative_path(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("must be a path inside the app directory, without '..'")
    return value



# systemd calendar events (OnCalendar=), checked on the laptop (no `systemd-analyze`
# there): a shorthand, or `[WEEKDAYS] [DATE] TIME [UTC]` (or a date without a time),
# each component `*`, a number, a range `a..b`, a list `a,b`, with an optional
# repetition `/n`. Documented in docs/workers.md.
CALENDAR_SHORTHANDS = ("minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly",
                       "semiannually")
_DAY = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_DAYS_RE = re.compile(rf"^{_DAY}(\.\.{_DAY})?(,{_DAY}(\.\.{_DAY})?)*$")


def _calendar_component(text: str, low: int, high: int) -> bool:
    for part in text.split(","):
        match = re.fullmatch(r"(\*|([0-9]+)(\.\.([0-9]+))?)(/([0-9]+))?", part)
        if not match:
            return False
        numbers = [int(n) for n in (match.group(2), match.group(4)) if n is not None]
        if any(not low <= n <= high for n in numbers) or (match.group(6) is not None and int(match.group(6)) < 1):
            return False
    return True


def calendar_event(value: str) -> str:
    problem = ValueError("must be a systemd calendar event (OnCalendar=) like 'daily', '*-*-* 03:00:00', "
                         "'Mon..Fri 08:30' or '*:0/15' (see docs/workers.md)")
    words = value.split()
    if len(words) == 1 and words[0] in CALENDAR_SHORTHANDS:
        return value
    if words and words[-1] == "UTC":
        words = words[:-1]
    if words and _DAYS_RE.match(words[0]):
        words = words[1:]
    date = time = None
    for word in words:
        if ":" in word and time is None:
            time = word
        elif "-" in word and date is None and time is None:
            date = word
        else:
            raise problem
    if date is None and time is None:
        raise problem
    if date is not None:
        parts = date.split("-")
        if len(parts) == 2:
            parts = ["*", *parts]
        if len(parts) != 3 or not all(_calendar_component(p, lo, hi) for p, (lo, hi) in
                                      zip(parts, ((1970, 2199), (1, 12), (1, 31)))):
            raise problem
    if time is not None:
        parts = time.split(":")
        if len(parts) == 2:
            parts.append("00")
        if len(parts) != 3 or not all(_calendar_component(p, 0, hi) for p, hi in zip(parts, (23, 59, 59))):
            raise problem
    return value

AbsPath = Annotated[str, Field(pattern=ABS_PATH_RE), AfterValidator(no_dot_dot)]
AppDirectory = Annotated[AbsPath, AfterValidator(reserved.app_directory)]
RelPath = Annotated[str, Field(pattern=REL_PATH_RE), AfterValidator(relative_path)]
Port = Annotated[int, Field(ge=1, le=65535)]
ServerName = Annotated[str, Field(pattern=SERVER_NAME_RE, max_length=253)]


# One line of shell, run by /bin/sh in the live release (systemd's `$` and `%` escaped
# by the templates).
Command = Annotated[str, Field(min_length=1, max_length=1000, pattern=r"^[^\n\r\x00]*$")]
UnitName = Annotated[str, Field(pattern=NAME_RE)]
