"""The audit log (<app_root>/audit.jsonl): who deployed, rolled back, switched maintenance
or broke the lock, when, and how it went."""

from __future__ import annotations

import json
import os
import socket
import time

from . import base, lock


# Audit and maintenance -----------------------------------------------------------
# <app_root>/audit.jsonl (root's, mode 640, in a directory the app user cannot
# write): one JSON object a line per deploy, rollback, maintenance switch and lock
# break: when (host clock), who (`by`: the laptop's user and machine, as the
# deploy gives them with --by; by hand on the host, the sudo user and this host),
# what (release ids from -> to) and how it ended (`result`).

def who() -> dict:
    """The person behind this command: --by (user@machine), else the holder of
    this run's deploy lock, else whoever runs it here (by hand, through sudo)."""
    if base.BY:
        user, _, machine = base.BY.rpartition("@")
        return {"user": user or base.BY, "machine": machine if user else "?"}
    holder = lock.lock_entry() or {}
    if base.RUN and holder.get("run") == base.RUN and holder.get("user"):
        return {"user": holder["user"], "machine": holder.get("machine", "?")}
    return {"user": os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid()),
            "machine": socket.gethostname(), "on_host": True}


def audit(event: str, result: str, **details) -> None:
    base.AUDITED = True
    moment = time.time()
    entry = {"at": base.iso(moment), "time": round(moment, 3), "app": base.CONFIG.get("app"), "event": event,
             "result": result, "by": who(),
             **{key: value for key, value in details.items() if value not in (None, "")}}
    base.append_line(base.AUDIT, entry)


def read_audit() -> list[dict]:
    return [entry for entry in base.read_lines(base.AUDIT) if isinstance(entry.get("event"), str)]


def describe_audit(entry: dict) -> str:
    by = entry.get("by") if isinstance(entry.get("by"), dict) else {}
    what = entry.get("to") or entry.get("release") or entry.get("holder") or ""
    if entry.get("from") or entry.get("to"):
        what = f"{entry.get('from') or '-'} -> {entry.get('to') or '-'}"
    extra = " ".join(f"{key}={entry[key]}" for key in ("state", "kind", "stage", "run") if entry.get(key))
    line = (f"{entry.get('at', '?')}  {entry['event']:<11} {str(entry.get('result', '?')):<11} "
            f"{by.get('user', '?')}@{by.get('machine', '?')}  {what}  {extra}").rstrip()
    reason = str(entry.get("reason") or "").splitlines()
    return line + (f"  ({reason[0][:200]})" if reason else "")


def deployers(entries: list[dict]) -> dict[str, dict]:
    """Release id -> the audit entry of the deploy that first made it live."""
    found: dict[str, dict] = {}
    for entry in entries:
        if entry.get("event") == "deploy" and entry.get("result") == "ok" and isinstance(entry.get("to"), str):
            found.setdefault(entry["to"], entry)
    return found


def cmd_audit(args) -> None:
    entries = read_audit()[-args.n:] if args.n else read_audit()
    for entry in entries:
        print(json.dumps(entry) if args.json else describe_audit(entry), flush=True)
