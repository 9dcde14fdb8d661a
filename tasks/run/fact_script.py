"""The fact batch's one command (tasks/run/prefetch.py): a shell script that runs
the noted fact commands side by side on the host, each output between tokens, and
its output cut back into each command's own lines.

pyinfra's per-file and per-unit facts (`stat`, `sha1sum`, `systemctl show`) are
grouped: one process answers all of a kind, each command's part exactly what it
prints when run alone, and a command is grouped only if pyinfra still builds it as
it was noted (`kind_of`); if a grouped call fails its commands are read live.
"""

from __future__ import annotations

import functools
import inspect
import re
import shlex

from pyinfra.api import StringCommand
from pyinfra.connectors.util import CommandOutput
from pyinfra.facts.files import LINUX_STAT_COMMAND, File, Sha1File
from pyinfra.facts.systemd import SYSTEMD_UNIT_NAME_REGEX, SystemdStatus

# Which pyinfra fact a noted command is, when one process can answer it together
# with others of its kind: ("stat", path), ("sha1", path) or ("systemctl", key, unit).
Kind = tuple


_UNIT = re.compile(SYSTEMD_UNIT_NAME_REGEX)
_signature = functools.lru_cache(maxsize=None)(inspect.signature)


def kind_of(fact, args: tuple, kwargs: dict) -> Kind | None:
    """The kind of fact `fact(*args, **kwargs)` asks, if it is one we group."""
    if not isinstance(fact, type):
        return None
    if fact.command is File.command:  # File, Directory, Link...: the same stat
        kind = "stat"
    elif fact is Sha1File:
        kind = "sha1"
    elif fact.command is SystemdStatus.command and issubclass(fact, SystemdStatus):
        kind = "systemctl"
    else:
        return None
    values = {key: value for key, value in kwargs.items() if not key.startswith("_")}
    try:
        bound = _signature(fact.command).bind(None, *args, **values).arguments
    except TypeError:
        return None
    if kind != "systemctl":
        path = bound.get("path")
        return (kind, path) if isinstance(path, str) and path.startswith("/") else None
    units = bound.get("services")
    unit = units if isinstance(units, str) else (units[0] if isinstance(units, list | tuple)
                                                 and len(units) == 1 else None)
    options = (bound.get("user_mode", False), bound.get("machine"), bound.get("user_name"))
    if options == (False, None, None) and isinstance(unit, str) and _UNIT.fullmatch(unit):
        return (kind, fact.state_key, unit)
    return None


@functools.lru_cache(maxsize=4096)  # the same files and units on every host
def command_of(kind: Kind) -> str:
    """The command pyinfra runs for a fact of this kind (its raw text)."""
    if kind[0] == "stat":
        return File().command(kind[1]).get_raw_value()
    if kind[0] == "sha1":
        return Sha1File().command(kind[1]).get_raw_value()
    fact = SystemdStatus()
    fact.state_key = kind[1]
    # pyinfra's guard for facts that need a program (pyinfra.api.facts._get_fact)
    return StringCommand(
        "if", "command", "-v", fact.requires_command(), ">/dev/null", "2>&1;", "then", "(",
        fact.command(services=[kind[2]]), ");", "else", "echo", "'##PYINFRA_NOCMD##';", "fi",
    ).get_raw_value()


def grouped_script(kind: str, members: list[tuple[int, Kind]]) -> str:
    """Shell that writes each member's output to "$_prefetch_dir/<index>" as its
    command alone would print it, and fails if it cannot ("$_prefetch_dir/<kind>"
    holds the tool's own output)."""
    scratch = f'"$_prefetch_dir/{kind}"'
    if kind == "systemctl":
        keys = sorted({key for _, (_, key, _) in members})
        units = list(dict.fromkeys(unit for _, (_, _, unit) in members))
        properties = " ".join(f"--property {key}" for key in ["Id", *keys])
        # One block per unit, blank-line separated; each member keeps its unit's
        # block with only the properties its own command asks for.
        spread = " ".join(
            f'printf "" > (d "/{index}"); '
            f'n = split(block[{units.index(unit) + 1}], line, "\\n"); '
            f'for (j = 1; j <= n; j++) if (line[j] ~ /^(Id|{key})=/) print line[j] > (d "/{index}"); '
            f'close(d "/{index}");'
            for index, (_, key, unit) in members
        )
        return (
            "command -v systemctl >/dev/null 2>&1 || exit 1\n"
            f'systemctl show --all {properties} {" ".join(units)} > {scratch} || exit 1\n'
            f'awk -v d="$_prefetch_dir" \'BEGIN {{ RS = "" }} {{ block[NR] = $0 }} '
            f'END {{ if (NR != {len(units)}) exit 1; {spread} }}\' {scratch}'
        )
    # stat / sha1sum: one line per existing path, in argument order; nothing for
    # a missing one (the same tests as pyinfra's commands decide which exist).
    exists, tool = {"stat": ("test -e {0} || test -L {0}", LINUX_STAT_COMMAND),
                    "sha1": ("test -e {0}", "sha1sum")}[kind]
    lines = ["set --"]
    for index, (_, path) in members:
        quoted = shlex.quote(path)
        lines.append(f'if {exists.format(quoted)}; then set -- "$@" {quoted}; _e{index}=1; else _e{index}=; fi')
    lines.append(f'if [ $# -gt 0 ]; then {tool} "$@" > {scratch} || exit 1; else : > {scratch}; fi')
    lines.append(f'exec < {scratch}')
    for index, _ in members:
        lines.append(f'if [ -n "$_e{index}" ]; then IFS= read -r _line || exit 1; '
                     f'printf \'%s\\n\' "$_line" > "$_prefetch_dir/{index}"; else : > "$_prefetch_dir/{index}"; fi')
    lines.append("if IFS= read -r _line; then exit 1; fi")
    return "\n".join(lines)


def batch_script(commands: list[str], token: str, kinds: dict[str, Kind] | None = None,
                  ahead: int = 0) -> str:
    """Run the first `ahead` commands one after the other, then every other command
    in a background subshell, side by side (those of a kind grouped into one), then
    print each one's exit status on a line starting with `token`, followed by its
    output lines."""
    kinds = kinds or {}
    groups: dict[str, list[tuple[int, Kind]]] = {}
    for i, command in enumerate(commands):
        if i < ahead:
            continue
        kind = kinds.get(command)
        if kind is not None and command_of(kind) == command:
            groups.setdefault(kind[0], []).append((i, kind))
    groups = {name: members for name, members in groups.items() if len(members) > 1}
    grouped = {i for members in groups.values() for i, _ in members}

    jobs: dict[str, list[int]] = {}  # background job -> the commands its exit status is for
    # Outputs go to files in memory (/dev/shm) where there is one: on a disk or an
    # overlay filesystem, creating and deleting the files costs more than the commands.
    lines = ['_prefetch_dir=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d) || exit 1',
             'trap \'rm -rf "$_prefetch_dir"\' EXIT']
    status = {}
    for i, command in enumerate(commands[:ahead]):
        lines.append(f'(\n{command}\n) >"$_prefetch_dir/{i}" 2>/dev/null </dev/null; _prefetch_rc_{i}=$?')
        status[i] = f"$_prefetch_rc_{i}"
    for i, command in enumerate(commands):
        if i >= ahead and i not in grouped:
            lines.append(f'(\n{command}\n) >"$_prefetch_dir/{i}" 2>/dev/null </dev/null & _prefetch_{i}=$!')
            jobs[str(i)] = [i]
    for name, members in groups.items():
        lines.append(f'(\n{grouped_script(name, members)}\n) 2>/dev/null </dev/null & _prefetch_{name}=$!')
        jobs[name] = [i for i, _ in members]
    for job, members in jobs.items():
        lines.append(f"wait $_prefetch_{job}; _prefetch_rc_{job}=$?")
        status.update({i: f"$_prefetch_rc_{job}" for i in members})
    lines.append(f'_prefetch_status="{" ".join(status[i] for i in range(len(commands)))}"')
    # One awk for the read-back: it ends every output line with a newline, so each
    # marker starts a line of its own even after output without a final newline.
    lines.append(
        f'cd "$_prefetch_dir" && awk -v token={token} -v status="$_prefetch_status" \'BEGIN {{ '
        'n = split(status, rc, " "); '
        'for (i = 0; i < n; i++) { print token, i, rc[i + 1]; while ((getline line < i) > 0) print line } }\''
    )
    return "\n".join(lines)


def parse(output: CommandOutput, commands: list[str], token: str) -> dict[str, list[str]]:
    """{command: stdout lines} for the commands that exited 0."""
    marker = re.compile(rf"^{token} (\d+) (\d+)$")
    results: dict[str, list[str]] = {}
    current = None
    for line in output.stdout_lines:
        match = marker.match(line)
        if match:
            index, status = int(match.group(1)), int(match.group(2))
            current = commands[index] if status == 0 and index < len(commands) else None
            if current is not None:
                results[current] = []
        elif current is not None:
            results[current].append(line)
    return results
