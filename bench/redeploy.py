"""Wall time of a code-only redeploy next to a full no-op run, on one throwaway host.

    .venv/bin/python -m bench.redeploy [--rounds 3]

Boots a Debian 12 throwaway host, deploys the example app (cold), then alternates
no-op runs and code-only redeploys (a new greeting each time) and prints the
median of each and their ratio. Not a test: nothing is asserted.
"""

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from dev import throwaway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--release", default="bookworm", choices=throwaway.RELEASES)
    args = parser.parse_args()

    host = throwaway.start_host(throwaway.ensure_image(args.release), labels={"io.pyinfra-flask.bench": "1"})
    try:
        with tempfile.TemporaryDirectory(prefix="bench-redeploy-") as tmp:
            work = Path(tmp)
            cold = run(host, work)
            noop, redeploy = [], []
            for round_number in range(args.rounds):
                app = work / f"app{round_number}"
                shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
                module = app / "greeting.py"
                module.write_text(module.read_text().replace("Hello from greeting", f"Hello from round {round_number}"))
                data = {"app_source": str(app)}
                redeploy.append(run(host, work, data=data).seconds)
                noop_run = run(host, work, data=data)
                if noop_run.changed_operations():
                    raise SystemExit(f"the no-op run changed {noop_run.changed_operations()}")
                noop.append(noop_run.seconds)
    finally:
        host.remove()

    noop_median, redeploy_median = statistics.median(noop), statistics.median(redeploy)
    print(f"\nDebian {args.release}, {args.rounds} rounds, medians:")
    print(f"  {'cold first deploy':<28}{cold.seconds:8.1f} s")
    print(f"  {'no-op run (full deploy.py)':<28}{noop_median:8.1f} s   {noop}")
    print(f"  {'code-only redeploy':<28}{redeploy_median:8.1f} s   {redeploy}")
    print(f"  {'redeploy / no-op':<28}{redeploy_median / noop_median:8.2f} x")


def run(host, work, data=None):
    result = throwaway.run_pyinfra(host, work, data=data)
    if result.returncode != 0:
        raise SystemExit(f"deploy failed:\n{result.output[-4000:]}")
    return result


if __name__ == "__main__":
    main()
