"""The host's record of activations (<app_root>/history.jsonl): what went live when, and
what follows from it (the rollback target, what prune keeps)."""

from __future__ import annotations

import os
import time

from . import base


def record(event: str, release: str, **extra) -> None:
    moment = time.time()
    entry = {"at": base.iso(moment), "time": round(moment, 3), "event": event, "release": release,
             **{key: value for key, value in extra.items() if value not in (None, "")}}
    base.append_line(base.HISTORY, entry)
    if event == "live":
        base.write_own(base.ROOT / "live-confirmed", release + "\n")


def read_history() -> list[dict]:
    return [entry for entry in base.read_lines(base.HISTORY)
            if isinstance(entry.get("release"), str) and isinstance(entry.get("event"), str)]


def confirmed() -> str | None:
    """The release whose activation last ended healthy (what uWSGI last ran well)."""
    try:
        fd = base.own_file(base.ROOT / "live-confirmed", os.O_RDONLY)
    except (FileNotFoundError, base.Failure):
        return None
    with os.fdopen(fd) as handle:
        return handle.read().strip() or None


def failed_releases(entries: list[dict]) -> dict[str, dict]:
    return {entry["release"]: entry for entry in entries if entry["event"] == "failed"}


def rollback_target(entries: list[dict], current: str | None, present: set[str]) -> str | None:
    """The release live before the current one, by the host's record: every
    activation puts its release on top of a stack, a rollback (without an id) takes
    the release it leaves off it, so rolling back again goes further back; releases
    that failed after a switch, or are gone, never qualify. Releases the record does
    not know (made before it existed) come after it, by name."""
    stack: list[str] = []
    failed = set(failed_releases(entries))
    for entry in entries:
        release, event = entry["release"], entry["event"]
        if event == "live":
            if entry.get("kind") == "rollback" and entry.get("from"):
                stack = [name for name in stack if name != entry["from"]]
            stack = [name for name in stack if name != release] + [release]
        elif event in ("failed", "removed"):
            stack = [name for name in stack if name != release]
    for release in reversed(stack):
        if release != current and release in present and release not in failed:
            return release
    known = {entry["release"] for entry in entries}
    older = sorted(name for name in present if name not in known and (current is None or name < current))
    return older[-1] if older else None


def prune_choice(names: list[str], entries: list[dict], current: str | None, keep: int) -> list[str]:
    """Releases to remove: all but the `keep` newest by the host's record (its last
    event for each; releases it does not know count as older, by name) and the live
    one. Releases that failed after a switch are removed first."""
    failed = set(failed_releases(entries))
    last: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry["event"] != "removed":
            last[entry["release"]] = index
    ranked = sorted((name for name in names if name not in failed), key=lambda name: (last.get(name, -1), name))
    kept = set(ranked[-keep:]) | ({current} if current else set())
    return [name for name in names if name not in kept]
