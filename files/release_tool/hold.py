"""An exclusive migration: requests held while it runs, instead of failed (maintenance)
or raced (a plain migration). docs/releases.md.

    1. root writes the hold marker (<app_root>/hold.json: the app can read it, never
       write or remove it) and reloads uWSGI gracefully: the workers finish what they
       serve and exit, and their successors import nothing of the app while the marker
       exists (the loader, templates/loader.py.j2); each request waits, up to the
       bound, then gets 503 with Retry-After;
    2. the migrate commands run, then the canary (the deploy's own checks are never held);
    3. the release is switched to, the hold ends right after the switch, and the
       activation's reload and health gate follow as for any release.

Whatever happens (a command or the canary failing, a signal), the marker is removed
before this ends: the held requests then go to the release `current` points to, the
old one unless the switch was made. Should this process end without removing it
(SIGKILL, the host going down), the loader holds nothing: the marker names this
process by pid and start time."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from . import activation, audit, base, releases, steps, uwsgi

MARKER = "hold.json"


def marker() -> Path:
    return base.ROOT / MARKER


def held() -> dict | None:
    """The marker's content while a hold is on, else None."""
    return base.read_own_json(marker())


def hold_on(bound: int, retry_after: int) -> bool:
    """Hold requests from now on; False (and no marker) if uWSGI is not running."""
    if not uwsgi.service_active():
        base.log(f"{base.CONFIG['service']} is not running: no requests to hold")
        return False
    # This process, by pid and start time: the loader holds nothing once it is gone.
    pid = os.getpid()
    base.write_own(marker(), json.dumps({"since_at": base.iso(time.time()), "bound": bound,
                                         "retry_after": retry_after, "pid": pid, "start": base._process(pid)[2],
                                         "by": audit.who()}) + "\n")
    os.chmod(marker(), 0o644)  # the app's workers read it (root-only app root: nobody else reaches it)
    base.log(f"holding requests to {base.CONFIG['app']} (at most {bound} s each, then 503)")
    try:
        # Every worker is replaced at once: none of the old release's is left serving.
        uwsgi.reload("graceful")
    except BaseException:
        hold_off()
        raise
    return True


def hold_off() -> None:
    if os.path.lexists(marker()):
        marker().unlink()
        base.log(f"requests to {base.CONFIG['app']} are no longer held")


def _stop(signum, frame):
    raise base.Failure(f"stopped by signal {signal.Signals(signum).name}")


def cmd_migrate(args) -> None:
    """The migrate commands of a new release with requests held, then its switch."""
    releases.release_dir(args.release)
    # A signal (the run stopped) ends this through `finally`, and with it the hold.
    previous = {number: signal.signal(number, _stop) for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        hold_on(args.hold, args.retry_after)
        for command in args.command:
            steps.cmd_run(argparse.Namespace(release=args.release, cmd=[command]))
        steps.cmd_canary(argparse.Namespace(release=args.release))
        activation.activate(args.release, "auto", args.host_name, run=args.run, after_switch=hold_off)
    finally:
        hold_off()
        for number, handler in previous.items():
            signal.signal(number, handler)


def cmd_hold(args) -> None:
    """status, or off: by hand, after a run that ended without ending its hold."""
    state = held()
    if args.state == "status":
        print("HOLD off" if state is None else f"HOLD on {json.dumps(state)}", flush=True)
        return
    hold_off()
    if state is None:
        base.log(f"requests to {base.CONFIG['app']} were not held")
