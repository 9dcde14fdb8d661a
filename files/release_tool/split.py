"""A canary by share of traffic (`canary_share`, docs/releases.md): a new release serves a
share of new clients beside the live one, then is promoted or rolled back by its numbers.

    1. the in-process check (steps.cmd_canary), as for any release;
    2. root's link <app_root>/canary points at the release, and the canary instance
       starts: uWSGI with the canary's ini (its own socket, FIFO and stats in
       /run/<app>-canary), as the app user, in a transient unit with the service's
       sandbox and environment;
    3. root writes the flag (<canary dir>/on, nginx's site tests it on every request):
       nginx sends the clients whose cookie id falls in the share to the canary, and logs
       which instance answered each request and with what status (the canary log);
    4. after the window, the log's lines since the flag are counted per instance: the
       canary is rolled back when it served fewer than `min_requests`, or when its 5xx rate
       exceeds the live release's by more than `max_error_rate` points; else promoted;
    5. promoted: `current` is switched and the main instance reloaded onto it, health-gated
       (activation.activate), then the flag goes and the canary instance ends gracefully
       (its clients pass on to the main instance, which runs the same release now).
       Rolled back: the flag goes, the canary instance ends gracefully, the release is
       removed. Either way the audit log (and so the hooks and the webhook) has the verdict
       and its numbers.

Whatever happens (a failure, a signal), the flag and the canary instance are gone before
this ends, and a release that was not promoted is removed. A request on its way to a
canary that just ended is passed on to the live instance by nginx (`backup`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from . import activation, assets, audit, base, releases, steps, uwsgi

# A canary instance outlives its window and promotion by at most this long, whatever happens to the deploy.
LEFT_OVER_SECONDS = 600


def config() -> dict:
    found = base.CONFIG.get("canary") or {}
    if not found:
        raise base.Failure("canary_share is 0 for this app: no canary by share of traffic")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


def unit_active(unit: str) -> bool:
    return _run("systemctl", "is-active", "--quiet", unit).returncode == 0


def start(release: str) -> None:
    """The canary instance: uWSGI on the canary's ini, as the app user, with the service's
    sandbox and environment, in a transient unit (Type=notify: started once uWSGI says so)."""
    canary, user = config(), base.CONFIG["user"]
    link = Path(canary["link"])
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, link)
    unit = canary["unit"]
    _run("systemctl", "stop", unit)  # left by a run that was killed
    _run("systemctl", "reset-failed", unit)
    argv = [
        "systemd-run", "--quiet", f"--unit={unit}", "--service-type=notify", "--collect",
        f"--description=uWSGI canary of {base.CONFIG['app']}: release {release} on trial",
        "-p", "NotifyAccess=main", "-p", f"User={user}", "-p", f"Group={user}", "-p", f"WorkingDirectory={base.ROOT}",
        "-p", f"RuntimeDirectory={Path(canary['socket_dir']).name}", "-p", "RuntimeDirectoryMode=0750",
        "-p", "KillSignal=SIGTERM",
        # Ended by this tool; systemd ends it all the same if that never comes (the deploy was cut off).
        "-p", f"RuntimeMaxSec={canary['window'] + base.CONFIG['reload_timeout'] + LEFT_OVER_SECONDS}",
        *[arg for path in base.CONFIG["environment_files"] for arg in ("-p", f"EnvironmentFile=-{path}")],
        *[arg for prop in base.CONFIG["sandbox"] for arg in ("-p", prop)],
        *[arg for where in base.CONFIG["writable"] for arg in ("-p", f"ReadWritePaths=-{where}")],
        f"--setenv=PATH={link}/.venv/bin:/usr/local/bin:/usr/bin:/bin",
        "--", base.CONFIG["uwsgi"], "--ini", canary["ini"],
    ]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 or not unit_active(unit):
        journal = _run("journalctl", "-u", unit, "-n", "20", "--no-pager", "-o", "cat").stdout
        raise base.Failure(f"the canary instance of release {release} did not start: {result.stderr.strip()}\n"
                           f"its last log lines:\n{journal}")
    base.log(f"canary instance {unit} started on release {release}")


def stop() -> None:
    """No more new requests to the canary, then its instance ends: gracefully (`q` on its
    master FIFO: the requests it serves are answered first), else stopped by systemd."""
    canary = config()
    flag = Path(canary["flag"])
    if os.path.lexists(flag):
        flag.unlink()
        base.log("nginx sends no client to the canary any more")
    unit = canary["unit"]
    if unit_active(unit):
        try:
            fd = base.open_no_follow(f"{canary['socket_dir']}/master.fifo", os.O_WRONLY | os.O_NONBLOCK,
                                     stat.S_IFIFO, "the canary's master FIFO")
            try:
                os.write(fd, b"q")
            finally:
                os.close(fd)
        except (OSError, base.Failure) as failure:
            base.log(f"the canary's master FIFO does not answer ({failure}): stopping it")
        deadline = time.monotonic() + base.CONFIG["reload_timeout"]
        while unit_active(unit) and time.monotonic() < deadline:
            time.sleep(0.2)
        _run("systemctl", "stop", unit)
        base.log(f"canary instance {unit} ended")
    _run("systemctl", "reset-failed", unit)
    Path(canary["link"]).unlink(missing_ok=True)


def log_size() -> int:
    try:
        return os.stat(config()["log"]).st_size
    except FileNotFoundError:
        return 0


def count(offset: int) -> dict:
    """The canary log's lines from `offset` (`$msec $status $upstream_addr`), counted by the
    instance that answered last (nginx passes a request on to the next address if one
    cannot be reached): {"canary": {"requests", "5xx"}, "live": {...}}. On a balancer the
    log is its own, the instances every app server's."""
    canary = config()
    found = {"canary": {"requests": 0, "5xx": 0}, "live": {"requests": 0, "5xx": 0}}
    # nginx's name of each instance's socket ("unix:/run/..." or "10.0.0.11:4031") -> canary or live.
    sockets = canary["sockets"]
    try:
        fd = os.open(canary["log"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return found
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise base.Failure(f"refusing the canary log {canary['log']}: not a regular file")
    with os.fdopen(fd, "rb") as handle:
        # A log rotated meanwhile is shorter: then all of the new one.
        handle.seek(offset if os.fstat(handle.fileno()).st_size >= offset else 0)
        for raw in handle:
            fields = raw.decode(errors="replace").split(" ", 2)
            if len(fields) != 3 or not fields[1].isdigit():
                continue
            # "a, b" (passed on) or "a : b" (an internal redirect): the last one answered.
            last = fields[2].strip().replace(" : ", ", ").rsplit(", ", 1)[-1]
            which = sockets.get(last)
            if which:
                found[which]["requests"] += 1
                found[which]["5xx"] += int(fields[1]) >= 500
    return found


def rate(side: dict) -> float:
    return 100.0 * side["5xx"] / side["requests"] if side["requests"] else 0.0


def verdict(numbers: dict) -> tuple[bool, str]:
    """(promote?, why), by the counts and the settings."""
    canary = config()
    new, old = numbers["canary"], numbers["live"]
    said = (f"canary {new['5xx']} 5xx of {new['requests']} ({rate(new):.1f} %), live {old['5xx']} of "
            f"{old['requests']} ({rate(old):.1f} %) in {canary['window']} s at {canary['share']} %")
    if new["requests"] < canary["min_requests"]:
        return False, f"too few requests to judge ({said}; canary_min_requests {canary['min_requests']})"
    if rate(new) > rate(old) + canary["max_error_rate"]:
        return False, f"5xx rate over the live release's + {canary['max_error_rate']:g} points ({said})"
    return True, f"5xx rate within the live release's + {canary['max_error_rate']:g} points ({said})"


def judge(numbers: dict) -> tuple[bool, str, dict]:
    """(promote?, why, the audit entry's details) from the window's counts and times."""
    canary = config()
    promote, why = verdict(numbers)
    return promote, why, {"kind": "canary", "canary": {
        "canary": numbers["canary"], "live": numbers["live"], "share": canary["share"], "window": canary["window"],
        "verdict": "promoted" if promote else "rolled-back", "why": why,
        # The window, by the clock of the host that split the traffic (seconds since the epoch).
        "opened": round(numbers["opened"], 3), "closed": round(numbers["closed"], 3),
        **({"balancers": numbers["balancers"]} if "balancers" in numbers else {})}}


def roll_back(release: str, why: str, details: dict, host_name: str, run: str) -> None:
    """The release on trial removed (its instance already ended), the audit's entry, and
    the failure that says so."""
    previous = releases.live()
    releases.discard(release)
    assets.rebuild(previous)
    audit.audit("deploy", "rolled-back", run=run, to=release, reason=f"canary: {why}", **{"from": previous},
                **details)
    raise base.RolledBack(f"release {release} ROLLED BACK by its canary on host {host_name}: {why}; "
                          f"{previous} is live")


def watch(release: str, still=lambda: None) -> dict:
    """The split opened (root's flag, which nginx tests on every request), the window
    waited out (`still` raises if the canary gave up meanwhile), and the window's counts
    with its times; the flag stays until stop() or close()."""
    canary = config()
    offset = log_size()
    base.write_own(Path(canary["flag"]), release + "\n")
    os.chmod(canary["flag"], 0o644)
    opened = time.time()
    base.log(f"canary: release {release} serves {canary['share']} % of new clients for {canary['window']} s")
    deadline = time.monotonic() + canary["window"]
    while time.monotonic() < deadline:
        still()
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return {**count(offset), "opened": opened, "closed": time.time()}


def _still_running(release: str) -> None:
    unit = config()["unit"]
    if not unit_active(unit):
        raise base.Failure(f"the canary instance of release {release} stopped during its window:\n"
                           + _run("journalctl", "-u", unit, "-n", "20", "--no-pager", "-o", "cat").stdout)


def _stop_signal(signum, frame):
    raise base.Failure(f"stopped by signal {signal.Signals(signum).name}")


def cmd_split(args) -> None:
    canary = config()
    release = args.release
    releases.release_dir(release)
    previous = releases.live()
    steps.cmd_canary(argparse.Namespace(release=release))
    if previous is None or previous == release or not uwsgi.service_active():
        base.log("no live release to compare with: the release replaces it at once")
        activation.activate(release, "auto", args.host_name, run=args.run)
        return
    # A signal (the run stopped) ends the canary through `finally`.
    handlers = {number: signal.signal(number, _stop_signal)
                for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    activated = False
    try:
        # The canary's static files beside the live ones (the live release's first).
        assets.rebuild(previous)
        start(release)
        numbers = watch(release, still=lambda: _still_running(release))
        promote, why, details = judge(numbers)
        if not promote:
            stop()
            roll_back(release, why, details, args.host_name, args.run)
        base.log(f"canary: promoting release {release}: {why}")
        # Canary clients stay on the canary until the main instance runs the release too.
        activated = True  # a failed health gate switches back and keeps the release, as for any deploy
        activation.activate(release, "auto", args.host_name, run=args.run, details=details)
    finally:
        try:
            stop()
        finally:
            if not activated and release in releases.releases() and release != releases.live():
                releases.discard(release)
                assets.rebuild(releases.live())
            for number, handler in handlers.items():
                signal.signal(number, handler)


# Behind load balancers (docs/releases.md): the deploy runs the steps of cmd_split on the
# app servers and the balancers in turn, each step on every host before the next. The
# app servers' steps ---------------------------------------------------------------

def cmd_canary_start(args) -> None:
    """The release on trial (checked by `ship`) as the canary instance beside the live one."""
    release = args.release
    releases.release_dir(release)
    previous = releases.live()
    if previous is None or previous == release or not uwsgi.service_active():
        raise base.Failure(f"no live release beside which release {release} could go on trial")
    assets.rebuild(previous)
    start(release)


def cmd_canary_verdict(args) -> None:
    """The balancers' counts (summed by the deploy) judged; promoted: the release goes live
    here (health-gated, as any activation) while the canary instance still serves its clients."""
    release, numbers = args.release, json.loads(args.numbers)
    promote, why, details = judge(numbers)
    if not promote:
        base.log(f"canary: release {release} is not promoted: {why}")
        return
    base.log(f"canary: promoting release {release}: {why}")
    try:
        activation.activate(release, "auto", args.host_name, run=args.run, details=details)
    except BaseException:
        # The main instance is back on the live release: the canary's clients go there too.
        stop()
        raise


def cmd_canary_finish(args) -> None:
    """Once the balancers send no client to it: the canary instance ends; a promoted release's
    host keeps its newest releases (the prune), one that was not promoted is removed and the
    deploy fails saying why."""
    release, numbers = args.release, json.loads(args.numbers)
    stop()
    if releases.live() == release:
        base.log(f"canary: release {release} is live")
        # Kept from the deploy's own prune until now: it would have counted the release on trial as old.
        activation.cmd_prune(args)
        return
    promote, why, details = judge(numbers)
    if release in releases.releases() and not promote:
        roll_back(release, why, details, args.host_name, args.run)


# The balancers' steps ---------------------------------------------------------------

NUMBERS = "canary numbers: "  # the line of cmd_canary_watch's answer the deploy reads (tasks/tool.py)


def cmd_canary_watch(args) -> None:
    """The balancer's split for the window; its counts as one JSON line."""
    handlers = {number: signal.signal(number, _stop_signal)
                for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        numbers = watch(args.release)
    except BaseException:
        cmd_canary_close(args)
        raise
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    print(NUMBERS + json.dumps(numbers), flush=True)


def cmd_canary_close(args) -> None:
    """Every client to the live release again (the flag removed)."""
    flag = Path(config()["flag"])
    if os.path.lexists(flag):
        flag.unlink()
        base.log("the balancer sends no client to the canary any more")
