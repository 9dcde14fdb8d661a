"""Deploy speed over a real network: SSH through a relay that adds a fixed delay each
way (bench/relay.py), next to the same runs without it, on one throwaway host.

    .venv/bin/python -m bench.latency [--rtt 40] [--rounds 5]

After a cold deploy, each round runs, at 0 ms and at RTT ms of round trip in turn:
pyinfra's floor (bench/floor.py: connect, one fact, no change), a no-op deploy, and a
code-only deploy (a new greeting). Medians are printed with each one's ratio to the
floor at the same latency, and the goals at RTT ms (no-op <= 1.3x the floor,
code-only <= 3x the floor). Its container carries the label io.pyinfra-flask.bench and
is removed at the end, failed or not. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.deploy_speed import start_host
from bench.relay import Relay
from dev import throwaway

GOALS = {"no-op deploy": 1.3, "code-only deploy": 3.0}


def pyinfra(inventory: Path, deploy: str, data: dict | None = None) -> float:
    command = [throwaway.PYINFRA, str(inventory), deploy, "-y"]
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value}"]
    run = throwaway.run_command(command)
    if run.returncode != 0:
        raise SystemExit(f"{deploy} failed:\n{run.output[-4000:]}")
    if data is None and deploy == "deploy.py" and run.changed_operations():
        raise SystemExit(f"the no-op run changed {run.changed_operations()}")
    return run.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=float, default=40, help="round trip added by the relay, in ms")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    # Its apt keeps packages in a directory of its own (see bench.deploy_speed.start_host).
    host = start_host(throwaway.ensure_image("bookworm"))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
                Relay(host.ssh_port, delay=args.rtt / 2000) as relay:
            work = Path(tmp)
            direct = host.write_inventory(work / "direct.py")
            relayed = host.write_inventory(work / "relayed.py", {"ssh_port": relay.port})
            app = work / "app"
            shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
            pyinfra(direct, "deploy.py", {"app_source": app})  # cold
            links = {"0 ms": direct, f"{args.rtt:g} ms": relayed}
            times: dict[tuple[str, str], list[float]] = {}
            for number in range(args.rounds):
                for link, inventory in links.items():
                    times.setdefault(("floor", link), []).append(pyinfra(inventory, "bench/floor.py"))
                    # The app's code stays the same for the no-op run, changes for the code-only one.
                    times.setdefault(("no-op deploy", link), []).append(
                        pyinfra(inventory, "deploy.py", {"app_source": app}))
                    module = app / "greeting.py"
                    module.write_text(re.sub(r'GREETING = ".*"', f'GREETING = "Round {number} at {link}"',
                                             module.read_text()))
                    times.setdefault(("code-only deploy", link), []).append(
                        pyinfra(inventory, "deploy.py", {"app_source": app}))
    finally:
        host.remove()

    print(f"\nOne Debian 12 host, medians of {args.rounds} alternating rounds (SSH through a relay adding "
          f"{args.rtt / 2:g} ms each way for the second column):\n")
    print(f"  {'':<20}" + "".join(f"{link:>22}" for link in links))
    for what in ("floor", "no-op deploy", "code-only deploy"):
        cells = []
        for link in links:
            median = statistics.median(times[(what, link)])
            floor = statistics.median(times[("floor", link)])
            cells.append(f"{median:8.2f} s ({median / floor:4.2f}x)")
        print(f"  {what:<20}" + "".join(f"{cell:>22}" for cell in cells))
    slow = list(links)[1]
    floor = statistics.median(times[("floor", slow)])
    print(f"\nGoals at {slow} (x pyinfra's floor):")
    for what, goal in GOALS.items():
        ratio = statistics.median(times[(what, slow)]) / floor
        print(f"  {what:<20}{ratio:6.2f}x  (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})")


if __name__ == "__main__":
    main()
