"""Read every fact of a run in one round trip instead of one SSH command each.

pyinfra 3 runs one remote command per fact while it works out what would change:
about 45 for this deploy, each a full SSH exec (~50 ms), so a run that changes
nothing spent most of its time waiting on the network. At the end of a run we note
which fact commands it asked each host (locally, in .cache/facts/, one file per host,
commands only); the next run sends them all to the host in one command, run side by
side there, and answers the same requests from that output.

What a run decides cannot change: a request is answered from the batch only for the
very command it was run for, with the same connection arguments (sudo, env, ...), if
it succeeded, and only until the run first changes that host: any other command or
upload on it ends the batch, and every later fact is read live, as pyinfra would.
Before that, nothing on the host was changed by this run, so the answer is what a
live read would give. A missing or stale list costs only speed. Commands holding
hidden values are never written down. With pyinfra's fact commands shown (-vv and
up) nothing is batched, so what is printed is what ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import weakref
from pathlib import Path

from pyinfra import logger
from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.state import BaseStateCallback
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks import REPO_ROOT

CACHE_DIR = REPO_ROOT / ".cache" / "facts"
FORMAT = 1
_BATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pyinfra Host -> its _Batch


def _cache_file(host) -> Path:
    return CACHE_DIR / (hashlib.sha256(host.name.encode()).hexdigest()[:24] + ".json")


def _default_connector_arguments(host) -> dict:
    arguments, _ = pop_global_arguments(host.state, host, {})
    return {key: value for key, value in arguments.items() if key in CONNECTOR_ARGUMENT_KEYS}


def _raw(command):
    """The exact command text, or None if it holds a masked value (never written down)."""
    if isinstance(command, StringCommand):
        raw = command.get_raw_value()
        return raw if raw == str(command) else None
    return command if isinstance(command, str) else None


def _batch_script(commands: list[str], token: str) -> str:
    """Run every command in a background subshell, side by side; then print each
    one's exit status on a line starting with `token`, followed by its output lines."""
    lines = ['_prefetch_dir=$(mktemp -d) || exit 1', 'trap \'rm -rf "$_prefetch_dir"\' EXIT']
    for i, command in enumerate(commands):
        lines.append(f'(\n{command}\n) >"$_prefetch_dir/{i}" 2>/dev/null </dev/null & _prefetch_{i}=$!')
    lines.append('_prefetch_status=""')
    lines += [f'wait $_prefetch_{i}; _prefetch_status="$_prefetch_status $?"' for i in range(len(commands))]
    # One awk for the read-back: it ends every output line with a newline, so each
    # marker starts a line of its own even after output without a final newline.
    lines.append(
        f'cd "$_prefetch_dir" && awk -v token={token} -v status="$_prefetch_status" \'BEGIN {{ '
        'n = split(status, rc, " "); '
        'for (i = 0; i < n; i++) { print token, i, rc[i + 1]; while ((getline line < i) > 0) print line } }\''
    )
    return "\n".join(lines)


def _parse(output: CommandOutput, commands: list[str], token: str) -> dict[str, list[str]]:
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


class _Batch:
    """Stands in for one host's fact and command methods for the rest of the run."""

    def __init__(self, host):
        self.host = host
        self.arguments = _default_connector_arguments(host)
        self.results: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.in_fact = False
        self.get_fact, self.run_shell_command = host.get_fact, host.run_shell_command
        self.changing_command = self.changing(host.run_shell_command)
        self.put_file, self.rsync = self.changing(host.put_file), self.changing(host.rsync)

    def install(self) -> None:
        self.host.get_fact = self.fact
        self.host.run_shell_command = self.command
        self.host.put_file, self.host.rsync = self.put_file, self.rsync

    def fetch(self, commands: list[str]) -> None:
        token = "@@prefetch-" + secrets.token_hex(8)
        ok, output = self.run_shell_command(StringCommand(_batch_script(commands, token)), **self.arguments)
        if ok:
            self.results = _parse(output, commands, token)
        logger.debug("%sprefetched %d of %d facts", self.host.print_prefix, len(self.results), len(commands))

    def changing(self, method):
        """`method`, first ending the batch: the host is about to change, so from now
        on every fact is read live."""
        def call(*args, **kwargs):
            self.results = {}
            return method(*args, **kwargs)
        return call

    def fact(self, *args, **kwargs):
        outer, self.in_fact = self.in_fact, True
        try:
            return self.get_fact(*args, **kwargs)
        finally:
            self.in_fact = outer

    def command(self, command, *args, **kwargs):
        if not self.in_fact:
            return self.changing_command(command, *args, **kwargs)
        arguments = {key: value for key, value in kwargs.items() if key in CONNECTOR_ARGUMENT_KEYS}
        raw = _raw(command) if arguments == self.arguments else None
        if raw is None:
            return self.run_shell_command(command, *args, **kwargs)
        if raw not in self.asked:
            self.asked.append(raw)
        if raw in self.results:
            return True, CommandOutput([OutputLine("stdout", line) for line in self.results[raw]])
        return self.run_shell_command(command, *args, **kwargs)


def start(host) -> None:
    """Answer this run's facts from one batched command (call before the first fact)."""
    host = host._get_module() if hasattr(host, "_get_module") else host  # pyinfra's context proxy
    state = host.state
    if state.print_fact_output or state.print_fact_input or host in _BATCHES:
        return
    batch = _Batch(host)
    batch.install()
    if not any(isinstance(handler, _RememberOnDisconnect) for handler in state.callback_handlers):
        state.add_callback_handler(_RememberOnDisconnect())
    _BATCHES[host] = batch
    try:
        remembered = json.loads(_cache_file(host).read_text())
    except (OSError, ValueError):
        return
    if remembered.get("format") == FORMAT and remembered.get("commands"):
        if not host.connected:
            host.connect(reason="to load facts", raise_exceptions=True)
        batch.fetch(list(remembered["commands"]))


class _RememberOnDisconnect(BaseStateCallback):
    @staticmethod
    def host_disconnect(state, host):
        _remember(host)


def _remember(host) -> None:
    """Note which facts this run asked for, for the next run."""
    batch = _BATCHES.get(host)
    if batch is None or not batch.asked:
        return
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"format": FORMAT, "host": host.name, "commands": batch.asked}, indent=1)
    with tempfile.NamedTemporaryFile("w", dir=CACHE_DIR, delete=False, suffix=".tmp") as tmp:
        tmp.write(content)
    os.replace(tmp.name, _cache_file(host))
