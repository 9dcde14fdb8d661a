"""The maintenance switch: the flag nginx tests on every request."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from . import audit, base


def _maintenance_dir() -> Path:
    """The app's maintenance directory: root's, no link, nobody else may write it
    (nginx reads the flag and the page there)."""
    path = Path(base.CONFIG["maintenance_dir"])
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise base.Failure(f"{path} does not exist: deploy first (it makes it)") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise base.Failure(f"refusing {path}: not a directory of uid {os.geteuid()}'s that only it can write "
                      "(a link, or writable by others)")
    return path


def maintenance_state() -> dict | None:
    """The flag's content ({since_at, by}) while maintenance is on, else None."""
    return base.read_own_json(_maintenance_dir() / "on")


def cmd_maintenance(args) -> None:
    """on: nginx answers 503 (the page, Retry-After) from the next request, except the
    health check, ACME challenges and the allowed clients; off: the app again. nginx
    looks for the flag on every request: no reload. Deploys leave it alone."""
    flag = _maintenance_dir() / "on"
    before = maintenance_state()
    if args.state == "status":
        print("MAINTENANCE off" if before is None else f"MAINTENANCE on {json.dumps(before)}", flush=True)
        return
    if args.state == "on":
        if before is None:
            moment = time.time()
            base.write_own(flag, json.dumps({"since_at": base.iso(moment), "by": audit.who()}) + "\n")
            os.chmod(flag, 0o644)  # nginx's workers only test it, but may read it
        base.log(f"maintenance is on for {base.CONFIG['app']}" + (" (it already was)" if before is not None else ""))
    else:
        flag.unlink(missing_ok=True)
        base.log(f"maintenance is off for {base.CONFIG['app']}" + (" (it already was)" if before is None else ""))
    audit.audit("maintenance", "ok", state=args.state, changed=(before is None) == (args.state == "on"))
