"""Read a run's facts in one round trip (two: see below) instead of one SSH command each.

pyinfra 3 runs one remote command per fact while it works out what would change:
about 45 for this deploy, each a full SSH exec (~50 ms), so a run that changes
nothing spent most of its time waiting on the network. At the end of a run we note
which fact commands it asked each host (locally, in the facts/ directory of this
machine's cache, ~/.cache/pyinfra-flask or $PYINFRA_FLASK_CACHE: one file per host,
commands only); the next run sends them all to the host in one command, run side by
side there, and answers the same requests from that output.

What a run decides cannot change: a request is answered from the batch only for the
very command it was run for, with the same connection arguments (sudo, env, ...), if
it succeeded, and only until the run next changes that host: any other command or
upload on it ends the batch. pyinfra reads every fact again when it executes, after
the confirmation prompt: the batch is read again then too (a second round trip), so
no answer is older than a live read would be. After a change, facts are read live
until an operation ends without changing the host; the next fact asked that the list
knows of is then read in one more batch with all the others it knows of (read after
the change, so no answer is older than a live read either), instead of one round
trip per fact until the end of the run. The wait for a quiet operation is for runs
where most operations change something (a first deploy): a batch after every change
cost more of the host's time than the live reads it replaced (a cold deploy took
49-52 s, against 40-42 s with `fact_batch: false`). The list is what the last two
runs asked (a code-only run after a no-op one asks a few more). A missing or stale
list costs only speed.

The deploy lock (tasks/run/lock.py) is taken in the first batch, ahead of every fact:
`start(first=...)` runs those commands first, one after the other, and then the
facts; their facts (`noted = False`) are answered at most once and never noted.
Commands holding hidden values are never written down. With pyinfra's fact commands shown (-vv and
up) nothing is batched, so what is printed is what ran.

The boundary: this module leans on how pyinfra 3.10 runs facts (the host's
`get_fact` and `run_shell_command`, its connector arguments). It switches itself on
only for the pyinfra releases it was tested with (TESTED_PYINFRA), and any surprise
while it starts leaves the run to plain pyinfra with a warning, never an error.
`fact_batch: false` (a setting) turns it off. The list of commands lives outside the
checkout, in the user's own cache directory, so nothing committed or pulled can put a
command into it. Its commands run on the host as root, `--dry` included: so the list
is used only when the directory and the file are the user's own, not writable by
anyone else, and not links (checked on what was opened, never through a link);
anything else is ignored with one warning line and the run reads its facts one by
one, as plain pyinfra (the next run writes a fresh list). It is written the same way:
mode 600 in a directory of mode 700, no link followed.

Most of those commands are pyinfra's per-file and per-unit facts; in the batch one
process answers all of a kind (tasks/run/fact_script.py: the batch's script and
its output read back).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
import weakref
from importlib.metadata import version
from pathlib import Path

import gevent
from pyinfra import logger
from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.state import BaseStateCallback
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks import REPO_ROOT, laptop_cache
from tasks.run.fact_script import Kind, batch_script, kind_of, parse

# pyinfra releases this was tested with (`version()` prefixes); any other runs plain.
TESTED_PYINFRA = ("3.10.",)
CACHE_DIR = laptop_cache() / "facts"
FORMAT = 5  # 5: lists noted before facts were per greenlet may hold operation commands
_BATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pyinfra Host -> its _Batch


def _cache_file(host) -> Path:
    # One list per checkout and host: two checkouts deploying the same host differ.
    key = f"{REPO_ROOT}\0{host.name}"
    return CACHE_DIR / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


# Connector arguments that change how commands run (and so what they print): all but
# where uploads wait on their way (the deploy sets `_temp_dir` for every operation).
RUN_ARGUMENT_KEYS = frozenset(CONNECTOR_ARGUMENT_KEYS) - {"_temp_dir"}


def _run_arguments(arguments: dict) -> dict:
    return {key: value for key, value in arguments.items() if key in RUN_ARGUMENT_KEYS}


def default_connector_arguments(host) -> dict:
    """The connector arguments (sudo, env, ...) a command run outside operations gets."""
    arguments, _ = pop_global_arguments(host.state, host, {})
    return _run_arguments(arguments)


def _raw(command):
    """The exact command text, or None if it holds a masked value (never written down)."""
    if isinstance(command, StringCommand):
        raw = command.get_raw_value()
        return raw if raw == str(command) else None
    return command if isinstance(command, str) else None


class _Batch:
    """Stands in for one host's fact and command methods for the rest of the run."""

    def __init__(self, host):
        self.host = host
        self.arguments = default_connector_arguments(host)
        self.results: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.kinds: dict[str, Kind] = {}  # asked commands that can be grouped
        # Per greenlet: pyinfra prepares every host side by side, and a host's facts are
        # also read from other hosts' greenlets (an app server reading the db server's),
        # so "in a fact" is the reading greenlet's own, never the host's: shared, a fact
        # read by one greenlet made another's operation commands look like facts (noted,
        # and run again in the next run's batch).
        self.reading: dict = {}  # greenlet -> (in a fact: True, its kind or ONCE; prepare_only)
        self.executing = False  # pyinfra has started executing on this host
        self.expected: list[str] = []  # the facts this run will ask (as far as we know)
        # Facts (`prepare_only = True`) only the deploy's code reads, while pyinfra
        # prepares: never read again once it executes (nothing would use the answer).
        self.prepare_only: set[str] = set()
        self.changed = False  # the host changed since the last batch
        # Since the last change, an operation ended without changing the host: a batch
        # now is likely to answer more than one operation's facts.
        self.quiet = True
        self.op_changed = False  # the operation pyinfra executes now changed the host
        self.get_fact, self.run_shell_command = host.get_fact, host.run_shell_command
        self.changing_command = self.changing(host.run_shell_command)
        self.put_file, self.rsync = self.changing(host.put_file), self.changing(host.rsync)

    def install(self) -> None:
        self.host.get_fact = self.fact
        self.host.run_shell_command = self.command
        self.host.put_file, self.host.rsync = self.put_file, self.rsync

    def uninstall(self) -> None:
        for name in ("get_fact", "run_shell_command", "put_file", "rsync"):
            self.host.__dict__.pop(name, None)

    def fetch(self, commands: list[str], kinds: dict[str, Kind] | None = None, ahead: list[str] = ()) -> None:
        """Read `commands` in one command, after `ahead` (run first, one after the other)."""
        self.results, self.changed = {}, False
        commands = [*ahead, *(command for command in commands if command not in ahead)]
        if not commands:
            return
        token = "@@prefetch-" + secrets.token_hex(8)
        script = batch_script(commands, token, kinds, ahead=len(ahead))
        ok, output = self.run_shell_command(StringCommand(script), **self.arguments)
        if ok:
            self.results = parse(output, commands, token)
        logger.debug("%sprefetched %d of %d facts", self.host.print_prefix, len(self.results), len(commands))

    def changing(self, method):
        """`method`, first ending the batch: the host is about to change, so from now
        on no answer read before is used."""
        def call(*args, **kwargs):
            self.results, self.changed, self.quiet, self.op_changed = {}, True, False, True
            return method(*args, **kwargs)
        return call

    def fact(self, fact, *args, **kwargs):
        me = gevent.getcurrent()
        outer = self.reading.get(me)
        self.reading[me] = (ONCE if getattr(fact, "noted", True) is False else (kind_of(fact, args, kwargs) or True),
                            getattr(fact, "prepare_only", False) is True)
        try:
            return self.get_fact(fact, *args, **kwargs)
        finally:
            if outer is None:
                del self.reading[me]
            else:
                self.reading[me] = outer

    def command(self, command, *args, **kwargs):
        in_fact, in_prepare_only = self.reading.get(gevent.getcurrent(), (False, False))
        if not in_fact:
            return self.changing_command(command, *args, **kwargs)
        raw = _raw(command) if _run_arguments(kwargs) == self.arguments else None
        if raw is None:
            return self.run_shell_command(command, *args, **kwargs)
        if in_fact is ONCE:  # never noted, answered from a batch at most once
            lines = self.results.pop(raw, None)
        else:
            if raw not in self.asked:
                self.asked.append(raw)
                if in_fact is not True:
                    self.kinds[raw] = in_fact
                if in_prepare_only:
                    self.prepare_only.add(raw)
            if self.executing and self.changed and self.quiet and raw in self.expected:
                self.fetch(self.expected, self.kinds)
            lines = self.results.get(raw)
        if lines is not None:
            return True, CommandOutput([OutputLine("stdout", line) for line in lines])
        return self.run_shell_command(command, *args, **kwargs)

    def read_again(self, ahead: list[str] = ()) -> None:
        """Read this run's facts (what the last run asked, and this one so far) again."""
        noted = _noted(self.host)
        remembered, kinds = _remembered(self.host, noted) or ([], {})
        self.prepare_only |= set(noted.get("prepare_only", []))
        self.expected = [command for command in dict.fromkeys(remembered + self.asked)
                         if not (self.executing and command in self.prepare_only)]
        self.kinds = {**kinds, **self.kinds}
        self.fetch(self.expected, self.kinds, ahead)


ONCE = "once"


def start(host, enabled: bool = True, first: list[str] = ()) -> bool:
    """Answer this run's facts from one batched command (call before the first fact).
    `first`: commands of facts that must run before any other is read (the deploy
    lock), sent ahead of the others in that command; their facts must say
    `noted = False`. False when the run is left to plain pyinfra."""
    host = host._get_module() if hasattr(host, "_get_module") else host  # pyinfra's context proxy
    if not enabled or not version("pyinfra").startswith(TESTED_PYINFRA):
        return False
    state = host.state
    if state.print_fact_output or state.print_fact_input:
        return False
    if host in _BATCHES:
        return True
    batch = None
    try:
        batch = _Batch(host)
        batch.install()
        if not any(isinstance(handler, _Callbacks) for handler in state.callback_handlers):
            state.add_callback_handler(_Callbacks())
        _BATCHES[host] = batch
        noted, ignored = _read_noted(host)
        if ignored:
            logger.warning(f"{host.print_prefix}fact batch: ignored {ignored}: its commands run as root on the "
                           "host, so only a list of your own that nobody else can write is used; facts are read "
                           "one by one this run")
        if _remembered(host, noted):
            if not host.connected:
                host.connect(reason="to load facts", raise_exceptions=True)
            batch.read_again(ahead=list(first))
    except Exception as exc:  # never an error: the run goes on as plain pyinfra
        logger.warning(f"{host.print_prefix}fact batch off for this run ({type(exc).__name__}: {exc})")
        if batch is not None:
            batch.uninstall()
        _BATCHES.pop(host, None)
        return False
    return True


def read_again(host) -> None:
    """The facts read so far may be stale (another run held the deploy lock while
    they were read): read them again, in one batch, if this host has one."""
    host = host._get_module() if hasattr(host, "_get_module") else host
    batch = _BATCHES.get(host)
    if batch is not None:
        batch.read_again()


def _remembered(host, noted: dict | None = None) -> tuple[list[str], dict[str, Kind]] | None:
    """What the last two runs asked (a code-only run after a no-op one asks a few facts
    the no-op run did not), and the kinds of those we group (from `noted`, the cache
    file already read, if given)."""
    remembered = _noted(host) if noted is None else noted
    if not remembered.get("commands"):
        return None
    kinds = {command: tuple(kind) for command, kind in remembered.get("kinds", {}).items()}
    return list(dict.fromkeys(remembered["commands"] + remembered.get("before", []))), kinds


def _noted(host) -> dict:
    return _read_noted(host)[0]


def _read_noted(host) -> tuple[dict, str | None]:
    """The list noted for `host`, and why a list there was ignored (None: it was not)."""
    try:
        directory = _open_cache_dir()
        try:
            fd = os.open(_cache_file(host).name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
        finally:
            os.close(directory)
    except FileNotFoundError:
        return {}, None
    except UnsafeCache as exc:
        return {}, str(exc)
    except OSError as exc:
        return {}, f"{_cache_file(host)} is a symbolic link" if _is_link_error(exc) else None
    try:
        problem = _unsafe(os.fstat(fd), _cache_file(host), stat.S_ISREG, "a regular file")
        if problem:
            return {}, problem
        with os.fdopen(os.dup(fd), "rb") as stream:
            remembered = json.loads(stream.read())
    except (OSError, ValueError):
        return {}, None
    finally:
        os.close(fd)
    if isinstance(remembered, dict) and remembered.get("format") == FORMAT:
        return remembered, None
    return {}, None


class UnsafeCache(Exception):
    """The cache directory is not the user's own (or is a link): not used."""


def _is_link_error(exc: OSError) -> bool:
    return exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR)  # what O_NOFOLLOW answers for a link


def _unsafe(info: os.stat_result, path: Path, kind, what: str) -> str | None:
    """Why an opened cache entry must not be used: not `kind`, someone else's, or
    writable by group or others; None when it is fine."""
    if not kind(info.st_mode):
        return f"{path} is not {what}"
    if info.st_uid != os.getuid():
        return f"{path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    if info.st_mode & 0o022:
        return f"{path} is writable by others than you (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _open_cache_dir(create: bool = False) -> int:
    """The cache directory, opened without following a link at its last step, if it is
    the user's own and nobody else can write it (UnsafeCache otherwise). `create`:
    made (mode 700) when missing, and an own directory others could write made 700."""
    if create:
        CACHE_DIR.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.mkdir(CACHE_DIR, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(CACHE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if _is_link_error(exc):
            raise UnsafeCache(f"{CACHE_DIR} is a symbolic link") from None
        raise
    info = os.fstat(fd)
    problem = _unsafe(info, CACHE_DIR, stat.S_ISDIR, "a directory")
    if problem and create and info.st_uid == os.getuid() and stat.S_ISDIR(info.st_mode):
        os.fchmod(fd, 0o700)  # the user's own, only too open: closed before anything is written
        problem = None
    if problem:
        os.close(fd)
        raise UnsafeCache(problem)
    return fd


class _Callbacks(BaseStateCallback):
    @staticmethod
    def operation_host_start(state, host, op_hash):
        # pyinfra now executes, and reads every fact again: so does the batch, once,
        # so that no answer is older than the live read it stands in for.
        batch = _BATCHES.get(host)
        if batch is not None and not batch.executing:
            batch.executing = True
            # What the last run asked (most operations read their facts only now) and
            # what this one asked so far.
            batch.read_again()
        if batch is not None:
            batch.op_changed = False

    @staticmethod
    def operation_host_success(state, host, op_hash, retry_count=0):
        batch = _BATCHES.get(host)
        if batch is not None and not batch.op_changed:
            batch.quiet = True

    @staticmethod
    def host_disconnect(state, host):
        _remember(host)


def _remember(host) -> None:
    """Note which facts this run asked for, for the next run."""
    batch = _BATCHES.get(host)
    if batch is None or not batch.asked:
        return
    last = _noted(host).get("commands", [])
    asked = set(batch.asked)
    before = [command for command in last if command not in asked]
    kinds = {command: kind for command, kind in batch.kinds.items() if command in asked or command in before}
    prepare_only = sorted(command for command in batch.prepare_only if command in asked or command in before)
    content = json.dumps({"format": FORMAT, "host": host.name, "commands": batch.asked,
                          "before": before, "kinds": kinds, "prepare_only": prepare_only}, indent=1)
    try:
        directory = _open_cache_dir(create=True)
    except (OSError, UnsafeCache):
        return  # not ours to write in (the run that read it said so): the next run reads live
    name, temporary = _cache_file(host).name, f".{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory)
        with os.fdopen(fd, "w") as stream:
            stream.write(content)
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError:
        try:
            os.unlink(temporary, dir_fd=directory)
        except OSError:
            pass
    finally:
        os.close(directory)
