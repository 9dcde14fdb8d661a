"""Deploy speed over a real network: SSH through a relay that adds a fixed delay each
way (bench/relay.py), next to the same runs without it, on one throwaway host.

    .venv/bin/python -m bench.latency [--rtt 40] [--rounds 5] [--cold [--fleet N]]

After a cold deploy, each round runs, at 0 ms and at RTT ms of round trip in turn:
pyinfra's floor (bench/floor.py: connect, one fact, no change), a no-op deploy, and a
code-only deploy (a new greeting). Medians are printed with each one's ratio to the
floor at the same latency, and the goals at RTT ms (no-op <= 1.3x the floor,
code-only <= 3x the floor). Then one more run of each kind with `--debug`, untimed,
counts what each sends over SSH: commands and uploads (pyinfra's "Running command on"
and "Attempting upload of" lines).

With --cold, the cold deploys are timed too, with a uWSGI wheel cache of the run's own
(PYINFRA_FLASK_CACHE in a temporary directory): the first host (the cache empty: it
compiles uWSGI and keeps the wheel), a second fresh host (the wheel cached), and with
--fleet N, N fresh hosts at once (the wheel cached); goals: one host with the wheel at
most 30 s, N hosts at most 1.5x one host. Its containers carry the label
io.pyinfra-flask.bench and are removed at the end, failed or not. Not a test: nothing
is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.deploy_speed import start_host
from bench.relay import Relay
from dev import throwaway

GOALS = {"no-op deploy": 1.3, "code-only deploy": 3.0}
COLD_GOAL, FLEET_GOAL = 30.0, 1.5


def pyinfra(inventory: Path, deploy: str, data: dict | None = None, *flags: str, no_op: bool = False):
    command = [throwaway.PYINFRA, str(inventory), deploy, "-y", *flags]
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value}"]
    run = throwaway.run_command(command)
    if run.returncode != 0:
        raise SystemExit(f"{deploy} failed:\n{run.output[-4000:]}")
    if no_op and run.changed_operations():
        print(f"  warning: a no-op run changed {run.changed_operations()}", flush=True)
    return run


def sent(output: str) -> tuple[int, int]:
    """(commands, uploads) a `--debug` run sent over SSH."""
    return output.count("Running command on "), output.count("Attempting upload of ")


def new_code(app: Path, tag: str) -> None:
    module = app / "greeting.py"
    module.write_text(re.sub(r'GREETING = ".*"', f'GREETING = "{tag}"', module.read_text()))


def cold(image: str, work: Path, fleet: int) -> dict[str, float]:
    """Cold deploys, timed: the first host compiles uWSGI (its wheel is kept in a cache of
    this run's own), then a fresh host with the wheel cached, then `fleet` fresh hosts at once."""
    os.environ["PYINFRA_FLASK_CACHE"] = str(work / "wheel-cache")
    app = work / "cold-app"
    shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
    times, hosts = {}, []
    try:
        for what, count in (("1 host, uWSGI compiled", 1), ("1 host, wheel cached", 1),
                            *([(f"{fleet} hosts at once, wheel cached", fleet)] if fleet > 1 else [])):
            batch = [start_host(image) for _ in range(count)]
            hosts += batch
            inventory = throwaway.write_group_inventory(work / f"cold-{len(hosts)}.py",
                                                        {"app_servers": [(h, {}) for h in batch]})
            times[what] = pyinfra(inventory, "deploy.py", {"app_source": app}).seconds
            print(f"  cold deploy, {what}: {times[what]:.1f} s", flush=True)
    finally:
        for h in hosts:
            h.remove()
        os.environ.pop("PYINFRA_FLASK_CACHE", None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=float, default=40, help="round trip added by the relay, in ms")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="time cold deploys too (uWSGI compiled, wheel cached)")
    parser.add_argument("--fleet", type=int, default=0, help="with --cold: N fresh hosts at once, wheel cached")
    args = parser.parse_args()

    image = throwaway.ensure_image("bookworm")
    cold_times = {}
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
            cold_times = cold(image, Path(tmp), args.fleet)
    # Its apt keeps packages in a directory of its own (see bench.deploy_speed.start_host).
    host = start_host(image)
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
                Relay(host.ssh_port, delay=args.rtt / 2000) as relay:
            work = Path(tmp)
            direct = host.write_inventory(work / "direct.py")
            relayed = host.write_inventory(work / "relayed.py", {"ssh_port": relay.port})
            app = work / "app"
            shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
            first = pyinfra(direct, "deploy.py", {"app_source": app}).seconds  # cold
            print(f"  cold deploy of the round's host (uWSGI's wheel from the user's cache when it is there): "
                  f"{first:.1f} s", flush=True)
            links = {"0 ms": direct, f"{args.rtt:g} ms": relayed}
            times: dict[tuple[str, str], list[float]] = {}
            for number in range(args.rounds):
                for link, inventory in links.items():
                    times.setdefault(("floor", link), []).append(pyinfra(inventory, "bench/floor.py").seconds)
                    # The app's code stays the same for the no-op run, changes for the code-only one.
                    times.setdefault(("no-op deploy", link), []).append(
                        pyinfra(inventory, "deploy.py", {"app_source": app}, no_op=True).seconds)
                    new_code(app, f"Round {number} at {link}")
                    times.setdefault(("code-only deploy", link), []).append(
                        pyinfra(inventory, "deploy.py", {"app_source": app}).seconds)
            # What each kind sends, counted on one more run of each (untimed: --debug prints a lot).
            counts["floor", "sent"] = sent(pyinfra(direct, "bench/floor.py", None, "--debug").output)
            counts["no-op deploy", "sent"] = sent(pyinfra(direct, "deploy.py", {"app_source": app}, "--debug",
                                                          no_op=True).output)
            new_code(app, "Counted")
            counts["code-only deploy", "sent"] = sent(pyinfra(direct, "deploy.py", {"app_source": app},
                                                              "--debug").output)
    finally:
        host.remove()

    print(f"\nOne Debian 12 host, medians of {args.rounds} alternating rounds (SSH through a relay adding "
          f"{args.rtt / 2:g} ms each way for the second column):\n")
    print(f"  {'':<20}" + "".join(f"{link:>22}" for link in links) + f"{'commands + uploads':>22}")
    for what in ("floor", "no-op deploy", "code-only deploy"):
        cells = []
        for link in links:
            median = statistics.median(times[(what, link)])
            floor = statistics.median(times[("floor", link)])
            cells.append(f"{median:8.2f} s ({median / floor:4.2f}x)")
        commands, uploads = counts[what, "sent"]
        print(f"  {what:<20}" + "".join(f"{cell:>22}" for cell in cells) + f"{f'{commands} + {uploads}':>22}")
    slow = list(links)[1]
    floor = statistics.median(times[("floor", slow)])
    print(f"\nGoals at {slow} (x pyinfra's floor):")
    for what, goal in GOALS.items():
        ratio = statistics.median(times[(what, slow)]) / floor
        print(f"  {what:<20}{ratio:6.2f}x  (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})")
    if cold_times:
        print("\nCold deploys (Debian 12, uWSGI's wheel in a cache of this run's own):")
        one = cold_times["1 host, wheel cached"]
        for what, seconds in cold_times.items():
            print(f"  {what:<36}{seconds:7.1f} s")
        print(f"  1 host, wheel cached: {one:.1f} s (goal <= {COLD_GOAL:g} s: "
              f"{'met' if one <= COLD_GOAL else 'NOT met'})")
        for what, seconds in cold_times.items():
            if "at once" in what:
                ratio = seconds / one
                print(f"  {what}: {ratio:.2f}x one host (goal <= {FLEET_GOAL}x: "
                      f"{'met' if ratio <= FLEET_GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
