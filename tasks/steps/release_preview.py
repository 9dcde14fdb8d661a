"""Uploading a release, and what `--dry --diff` shows of it: the code change.

A release travels as one tarball. Handed to files.put, `--diff` would print that
tarball (tar headers, NUL bytes, every line of every file as added), which is no
help for deciding on a deploy. Instead, the new release's file list (path -> sha256
and mode, also written to its `.deploy-release.json`) is compared with the live
release's, and the preview is:

- one line per added, removed, changed file (binary files named with their size,
  never dumped);
- a unified diff for each changed text file (the host's copy read, bounded, only
  for those) and each added text file of modest length;
- for a first deploy, the files it would add (the first few dozen, then a count).

Nothing of the tarball is printed, nor any file that never ships (tasks/config/release_exclude.py);
a host's copy holding a private key is named, not shown. The live release's list
comes from its metadata, or (a release made before releases carried one) is computed
on the host. Like pyinfra's own files.put, the preview is printed when pyinfra runs
with `--diff` (`state.config.DIFF`), while it works out what would change.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import re
import secrets
from dataclasses import dataclass, field

import click
from pyinfra import host, logger, state
from pyinfra.api import operation
from pyinfra.api.command import FileUploadCommand, StringCommand

from tasks.config.release_exclude import holds_private_key, secret_path
from tasks.config.release_exclude import printable as _printable
from tasks.steps.live_release import MAX_FETCH_BYTES, MAX_FILE_BYTES, LiveReleaseFiles, ReleaseFileContents
from tasks.steps.uploads import temporary_name

META = ".deploy-release.json"
MAX_FETCH_FILES = 100
MAX_ADDED_LINES = 200  # an added text file longer than this is named, not shown
MAX_DIFF_LINES = 3000  # diff lines printed for one release, at most
MAX_LISTED = 40  # files listed for a first release
RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# The comparison ---------------------------------------------------------------

@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    modes: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (live mode, new mode)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.modes)


def compare(live: dict[str, dict], new: dict[str, dict]) -> Changes:
    changes = Changes()
    for path in sorted(set(live) | set(new)):
        before, after = live.get(path), new.get(path)
        if before is None:
            changes.added.append(path)
        elif after is None:
            changes.removed.append(path)
        else:
            if before.get("sha256") != after.get("sha256"):
                changes.changed.append(path)
            if str(before.get("mode")) != str(after.get("mode")):
                changes.modes[path] = (str(before.get("mode")), str(after.get("mode")))
    return changes


def text_lines(data: bytes | None) -> list[str] | None:
    """The lines of a text file (UTF-8, no NUL), or None for anything else."""
    if data is None or b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def _showable(path: str, data: bytes | None, size_limit: int = MAX_FILE_BYTES) -> bool:
    return (data is not None and len(data) <= size_limit and not secret_path(path)
            and not holds_private_key(data) and text_lines(data) is not None)


def to_fetch(changes: Changes, live_files: dict[str, dict], new_data: dict[str, bytes]) -> list[str]:
    """The changed files whose host copy is worth reading: text on the new side,
    not too large on either side, within the preview's budget."""
    chosen, budget = [], MAX_FETCH_BYTES
    for path in changes.changed:
        live_size = int(live_files.get(path, {}).get("size") or 0)
        if _showable(path, new_data.get(path)) and live_size <= MAX_FILE_BYTES and live_size <= budget:
            chosen.append(path)
            budget -= live_size
            if len(chosen) == MAX_FETCH_FILES:
                break
    return chosen


def render(changes: Changes, new_id: str, live_id: str, new_files: dict[str, dict], live_files: dict[str, dict],
           new_data: dict[str, bytes], live_data: dict[str, bytes | None],
           shared: tuple[tuple[str, ...] | None, tuple[str, ...]] = (None, ())) -> list[str]:
    """The preview's lines (uncoloured): a summary, one line per file, then the diffs."""
    counts = [f"{len(changes.changed)} changed", f"{len(changes.added)} added", f"{len(changes.removed)} removed"]
    lines = [f"Release {new_id} would replace the live {live_id}: {', '.join(counts)} file(s)"]
    notes: dict[str, tuple[str, str]] = {}  # path -> (what, detail)
    diffs: list[list[str]] = []

    for path in changes.changed:
        new, live = new_data.get(path), live_data.get(path)
        mode = changes.modes.get(path)
        extra = f"mode {mode[0]} -> {mode[1]}, " if mode else ""
        if secret_path(path) or (new is not None and holds_private_key(new)):
            detail = "not shown"
        elif text_lines(new) is None:
            detail = f"binary, {_size(new_files[path].get('size', 0))}"
        elif len(new) > MAX_FILE_BYTES or int(live_files[path].get("size") or 0) > MAX_FILE_BYTES:
            detail = f"larger than {_size(MAX_FILE_BYTES)}: not shown"
        elif live is not None and holds_private_key(live):
            detail = "the host's copy holds a private key: not shown"
        elif live is not None and text_lines(live) is None:
            detail = "binary on the host, text now"
        elif live is None:
            detail = "the host's copy was not read"
        else:
            detail = ""
            diffs.append(list(difflib.unified_diff(text_lines(live), text_lines(new), f"a/{path}", f"b/{path}",
                                                   lineterm="")))
        notes[path] = ("changed", (extra + detail).rstrip(", "))
    for path in changes.added:
        new = new_data.get(path)
        new_lines = text_lines(new)
        if secret_path(path) or (new is not None and holds_private_key(new)):
            notes[path] = ("added", "not shown")
        elif new_lines is None:
            notes[path] = ("added", f"binary, {_size(new_files[path].get('size', 0))}")
        elif len(new_lines) > MAX_ADDED_LINES or len(new) > MAX_FILE_BYTES:
            notes[path] = ("added", f"{len(new_lines)} lines: not shown")
        else:
            notes[path] = ("added", f"{len(new_lines)} lines")
            diffs.append(list(difflib.unified_diff([], new_lines, "/dev/null", f"b/{path}", lineterm="")))
    for path in changes.removed:
        notes[path] = ("removed", "")
    for path, (before, after) in changes.modes.items():
        notes.setdefault(path, ("mode", f"{before} -> {after}"))

    for path in sorted(notes):
        what, detail = notes[path]
        lines.append(f"  {what:<8} {_printable(path)}" + (f" ({detail})" if detail else ""))
    live_shared, new_shared = shared
    if live_shared is not None and tuple(live_shared) != tuple(new_shared):
        lines.append(f"  shared paths: {', '.join(live_shared) or '(none)'} -> {', '.join(new_shared) or '(none)'}")
    if len(lines) == 1:
        lines.append("  no file differs (the release's links or venv do)")

    budget = MAX_DIFF_LINES
    for number, diff in enumerate(diffs):
        if budget <= 0:
            lines.append(f"  ... {sum(len(d) for d in diffs[number:])} more diff lines not shown")
            break
        lines.extend(_printable(line) for line in diff[:budget])
        if len(diff) > budget:
            lines.append(f"  ... {len(diff) - budget} more diff lines not shown")
        budget -= len(diff)
    return lines


def render_first(new_id: str, new_files: dict[str, dict], reason: str | None = None) -> list[str]:
    """A release with nothing live to compare with: its files, listed (not shown)."""
    paths = sorted(new_files)
    head = (f"Release {new_id} would be the first on this host" if reason is None
            else f"Release {new_id}: the live release's files could not be read ({_printable(reason)})")
    lines = [f"{head}: {len(paths)} file(s)"]
    lines += [f"  added    {_printable(path)}" for path in paths[:MAX_LISTED]]
    if len(paths) > MAX_LISTED:
        lines.append(f"  ... and {len(paths) - MAX_LISTED} more")
    return lines


def preview(bundle, app_root: str) -> list[str]:
    """The preview of replacing the host's live release with `bundle`."""
    live = host.get_fact(LiveReleaseFiles, app_root=app_root)
    if live is None:
        return render_first(bundle.id, bundle.files)
    if not isinstance(live, dict) or "error" in live or not isinstance(live.get("files"), dict) \
            or not RELEASE_ID.match(str(live.get("id", ""))):
        reason = live.get("error") if isinstance(live, dict) else None
        return render_first(bundle.id, bundle.files, reason=reason or "unexpected answer")
    live_files = live["files"]
    changes = compare(live_files, bundle.files)
    new_data = bundle.contents(changes.changed + changes.added)
    fetch = to_fetch(changes, live_files, new_data)
    live_data = host.get_fact(ReleaseFileContents, app_root=app_root, release=live["id"],
                              paths=tuple(fetch)) if fetch else {}
    live_shared = live.get("shared")
    return render(changes, bundle.id, live["id"], bundle.files, live_files, new_data, live_data,
                  shared=(tuple(live_shared) if isinstance(live_shared, list) else None, bundle.shared))


def _coloured(line: str) -> str:
    if line.startswith(("+++", "---")):
        return click.style(line, bold=True)
    if line.startswith("@@"):
        return click.style(line, "cyan")
    if line.startswith("+"):
        return click.style(line, "green")
    if line.startswith("-"):
        return click.style(line, "red")
    return line


@operation()
def ship_release(bundle, app_name: str, app_root: str, command):
    """Upload a release's tarball and run `command(upload, sha256)` on it (the release
    tool's `ship`, which checks the hash before anything is unpacked). Connected with
    sudo, the tarball goes to the SSH user's private upload directory (tasks/steps/uploads.py)
    as that user, and root reads it from there; as root, to a file of root's in the
    releases directory. With `--diff`, first show what the release changes against the
    live one (never the tarball)."""
    if state.config.DIFF and not state.is_executing:
        header, *rest = preview(bundle, app_root)
        logger.info(f"{host.print_prefix}{click.style(header, bold=True)}")
        for line in rest:
            logger.info("    %s", _coloured(line))
        logger.info("")
    arguments = host.current_op_global_arguments or {}
    if arguments.get("_sudo") and arguments.get("_temp_dir"):
        upload = f"{arguments['_temp_dir']}/release-{app_name}-{secrets.token_hex(16)}.tar"
        yield FileUploadCommand(io.BytesIO(bundle.tar), upload, _sudo=False)
    else:
        upload = f"{app_root}/releases/.upload-{secrets.token_hex(16)}.tar"
        yield FileUploadCommand(io.BytesIO(bundle.tar), upload, remote_temp_filename=temporary_name())
    yield StringCommand(command(upload, hashlib.sha256(bundle.tar).hexdigest()))


_warned_runs: set[int] = set()


def warn_if_diff_is_skipped(run_state=None) -> bool:
    """Say once per run, at its start, that `--diff` will show nothing: with `-y`
    pyinfra skips change detection (`State.should_check_for_changes`), so no operation
    works out its change before it runs and no diff or preview is printed."""
    run_state = run_state or state
    if not run_state.config.DIFF or run_state.should_check_for_changes() or id(run_state) in _warned_runs:
        return False
    _warned_runs.add(id(run_state))
    logger.warning("--diff with -y shows no diff: pyinfra skips change detection with -y; "
                   "run without -y (with --dry to change nothing) to see what would change")
    return True
