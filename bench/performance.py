"""Deploy speed, serving speed, and where a cold deploy spends its time, measured in
one run on throwaway hosts.

    .venv/bin/python -m bench.performance [--hosts 4] [--duration 10] [--connections 32] [--rounds 3]
                                          [--serving-rounds 3]

1. Deploy speed. A cold first deploy of the example app on 1 bare host and on N bare
   hosts at once; then, ROUNDS times on each, a code-only redeploy (a new greeting), a
   no-op re-run, and pyinfra's floor: bench/floor.py, one operation that reads one fact
   and changes nothing, with the same inventory. Medians are reported, with
   no-op / floor and N hosts / 1 host.
2. Serving, on the 1-host deploy with the deploy's defaults: wrk (on this machine,
   against the host's ports published on 127.0.0.1) through nginx -> uWSGI; the same
   app behind the same nginx on Flask's built-in server (threaded) and on gunicorn
   (gthread workers, as many processes and threads as the deploy's uWSGI); and nginx
   answering `return 200` itself (the ceiling). Same wrk settings for the four, one
   after the other, in SERVING_ROUNDS interleaved rounds (medians); requests/s,
   p50/p99 latency and every error (non-2xx/3xx, socket errors) of every round.
3. Where the cold deploys spent their time: pyinfra's output is read line by line as
   it streams; the time between consecutive steps (`--> Starting operation: ...`)
   is summed by group (packages, uWSGI compile, app venv, ...).

Prints one table with the goals met or not, and writes bench/results/performance.csv,
bench/results/performance.png and the output of the cold and median no-op runs
with a time on each step (bench/results/cold-*.log, noop-*.log).
Every container it starts carries the label io.pyinfra-flask.bench and is removed at
the end, failed or not. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dev import throwaway

LABELS = {"io.pyinfra-flask.bench": "1"}
RESULTS = throwaway.REPO_ROOT / "bench" / "results"
APP = "greeting"
ROOT = f"/srv/{APP}"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
APT_ARCHIVES = "/var/cache/apt/bench-archives"

# Goals from the issue.
GOALS = {
    "noop_floor": 2.0,  # no-op re-run at most 2x pyinfra's floor
    "noop_hosts": 1.5,  # N hosts no-op at most 1.5x one host
    "vs_flask": 4.0,  # serving at least 4x Flask's built-in server
    "vs_ceiling": 0.20,  # and at least 20% of nginx's own ceiling
}

# Bench scaffolding on the 1-host deploy, not part of the deploy: Flask's built-in
# server behind the same nginx on 8081, nginx's own ceiling on 8082, gunicorn on 8083.
FLASK_PORT, CEILING_PORT, GUNICORN_PORT = 8081, 8082, 8083
GUNICORN_VENV = "/opt/bench-gunicorn"


def _proxy_server(port: int, name: str, upstream_port: int) -> str:
    return f"""server {{
    listen {port};
    access_log /var/log/nginx/bench-{name}.access.log;
    location / {{
        proxy_pass http://127.0.0.1:{upstream_port};
        proxy_set_header Host $host;
    }}
}}
"""


NGINX_BENCH_SITE = ("# bench.performance scaffolding (not part of the deploy)\n"
                    + _proxy_server(FLASK_PORT, "flask", 5000) + _proxy_server(GUNICORN_PORT, "gunicorn", 5001) + f"""\
server {{
    listen {CEILING_PORT};
    access_log /var/log/nginx/bench-ceiling.access.log;
    location / {{
        return 200 "ok\\n";
    }}
}}
""")
FLASK_SERVER = "from wsgi import app; app.run(host='127.0.0.1', port=5000)"

# Cold-deploy steps by group, from the deploy's `@deploy` names ("uWSGI | Install ...").
STARTUP, PREPARE, FINISH, OTHER = ("pyinfra start-up, SSH connect", "deploy.py + facts (prepare)",
                                   "results, disconnect", "other operations")
APP_VENV = "app venv (pip install Flask)"
OP_GROUPS = {
    "System packages": "system packages (apt)",
    "uWSGI": "uWSGI venv + compile",
    "Release": "release: upload, unpack, import check",
    "App user and directories": "user, uwsgi.ini, systemd unit",
    "uWSGI configuration": "user, uwsgi.ini, systemd unit",
    "uWSGI service": "user, uwsgi.ini, systemd unit",
    "Log rotation": "user, uwsgi.ini, systemd unit",
    "nginx sites": "nginx site, nginx -t, reload",
    "Release activation": "switch, start uWSGI, health check",
    "Health check": "switch, start uWSGI, health check",
}
GROUP_ORDER = [STARTUP, PREPARE, "system packages (apt)", "uWSGI venv + compile", APP_VENV,
               *dict.fromkeys(group for group in OP_GROUPS.values() if group not in (
                   "system packages (apt)", "uWSGI venv + compile")), OTHER, FINISH]


@dataclass
class Run:
    """One pyinfra run: exit code, output, wall time, and when each `--> ` line came."""

    returncode: int
    output: str
    seconds: float
    marks: list[tuple[float, str]] = field(default_factory=list)

    def changed_operations(self) -> list[str]:
        return throwaway.DeployRun(self.returncode, self.output, self.seconds).changed_operations()


def run_streamed(command: list[str], timeout: float = 1800) -> Run:
    """Run a command from the repository root as throwaway.run_command does, reading
    its output line by line as it comes, so each `--> ` line gets a time."""
    started = time.monotonic()
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=throwaway.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    lines, marks = [], []
    try:
        for line in proc.stdout:
            now = time.monotonic() - started
            lines.append(line)
            clean = ANSI.sub("", line).strip()
            if clean.startswith("--> "):
                marks.append((now, clean[4:]))
        returncode = proc.wait()
    finally:
        killer.cancel()
    return Run(returncode, "".join(lines), time.monotonic() - started, marks)


def pyinfra(inventory: Path, deploy: str = "deploy.py", data: dict | None = None) -> Run:
    command = [throwaway.PYINFRA, str(inventory), deploy, "-y"]
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value}"]
    run = run_streamed(command)
    if run.returncode != 0:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "failed.log").write_text(run.output)
        errors = [line for line in run.output.splitlines() if "rror" in line or "failed" in line.lower()]
        raise SystemExit(f"`{' '.join(command)}` failed (whole output in {RESULTS / 'failed.log'}):\n"
                         + "\n".join(errors[:40]) + "\n...\n" + run.output[-3000:])
    return run


def breakdown(run: Run) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per group and per operation of a run, from its `--> ` lines: each step
    lasts until the next `--> ` line (the last until the process ended)."""
    groups = dict.fromkeys(GROUP_ORDER, 0.0)
    ops: dict[str, float] = {}
    bounds = [(0.0, "Loading config...")] + run.marks + [(run.seconds, "end")]
    phase = STARTUP
    for (start, line), (end, _) in itertools.pairwise(bounds):
        if line.startswith("Preparing operation"):
            phase = PREPARE
        elif line.startswith("Starting") and "operation:" in line:
            name = line.split("operation:", 1)[1].strip()
            ops[name] = ops.get(name, 0.0) + end - start
            groups[classify(name)] += end - start
            continue
        elif line.startswith("Results"):
            phase = FINISH
        groups[phase] += end - start
    return groups, ops


def classify(op_name: str) -> str:
    # "App server | System packages | Install ...": the innermost `@deploy` names the group.
    *deploys, name = op_name.split(" | ")
    deploy = deploys[-1] if deploys else ""
    if deploy == "Release" and name.startswith("Build venv"):
        return APP_VENV
    return OP_GROUPS.get(deploy, OTHER) if deploys else OTHER


# --- serving -----------------------------------------------------------------------

@dataclass
class Load:
    target: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors


def wrk(url: str, duration: int, connections: int, threads: int = 2) -> str:
    threads = min(threads, connections)
    proc = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                           "--timeout", "5s", url], check=False, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed against {url}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(target: str, output: str) -> Load:
    def latency(percent: str) -> float:
        return to_ms(re.search(rf"^\s*{percent}%\s+(\S+)", output, re.MULTILINE).group(1))

    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(
        target=target,
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(re.search(r"(\d+) requests in", output).group(1)),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def set_up_serving(host: throwaway.Host) -> dict[str, str]:
    """Flask's built-in server, gunicorn and nginx's ceiling next to the deployed stack;
    the URL of each of the four, checked to answer as expected."""
    host.exec(f"cat > /etc/nginx/conf.d/pyinfra-flask-bench.conf <<'EOF'\n{NGINX_BENCH_SITE}EOF\n"
              "nginx -t 2>&1 && systemctl reload nginx")
    host.exec(f"systemd-run --unit=bench-flask --uid={APP} --gid={APP} --working-directory={ROOT}/current "
              f"{ROOT}/current/.venv/bin/python -c \"{FLASK_SERVER}\"")
    # gunicorn (from a venv of its own, put on the path) runs the app in the release's own venv, with
    # uWSGI's processes and threads.
    ini = host.exec(f"cat {ROOT}/uwsgi.ini")
    processes, threads = (re.search(rf"^{key} = (\d+)$", ini, re.MULTILINE).group(1) for key in ("processes", "threads"))
    host.exec(f"python3 -m venv {GUNICORN_VENV} && {GUNICORN_VENV}/bin/pip install -q --disable-pip-version-check "
              "gunicorn")
    gunicorn_path = host.exec(f"{GUNICORN_VENV}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
    host.exec(f"systemd-run --unit=bench-gunicorn --uid={APP} --gid={APP} --working-directory={ROOT}/current "
              f"--setenv=PYTHONPATH={gunicorn_path.strip()} {ROOT}/current/.venv/bin/python -m gunicorn "
              f"--worker-class gthread --workers {processes} --threads {threads} --bind 127.0.0.1:5001 wsgi:app")
    print(f"  gunicorn: gthread, {processes} processes x {threads} threads (the deploy's uWSGI)", flush=True)
    urls = {
        "nginx -> uWSGI (the deploy)": f"{host.url}/",
        "nginx -> Flask built-in server": f"http://127.0.0.1:{host.extra_ports[FLASK_PORT]}/",
        "nginx -> gunicorn (gthread)": f"http://127.0.0.1:{host.extra_ports[GUNICORN_PORT]}/",
        "nginx return 200 (ceiling)": f"http://127.0.0.1:{host.extra_ports[CEILING_PORT]}/",
    }
    expect = ["Hello from greeting", "Hello from greeting", "Hello from greeting", "ok"]
    deadline = time.monotonic() + 30
    for (name, url), text in zip(urls.items(), expect):
        while True:
            status, body = http_get(url)
            if status == 200 and text in body:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} at {url} answered {status}: {body[:300]}\n" + host.exec(
                    "journalctl -u bench-flask -u bench-gunicorn --no-pager | tail -20", check=False))
            time.sleep(0.5)
    return urls


def measure_serving(urls: dict[str, str], duration: int, connections: int, rounds: int) -> list[Load]:
    """ROUNDS rounds of the targets one after the other, so drift of the shared machine
    falls on all of them alike; per target the median round's requests/s and latencies
    (every request and every error of every round counted)."""
    for url in urls.values():
        wrk(url, min(2, duration), connections)  # warm-up, not counted
    runs: dict[str, list[Load]] = {name: [] for name in urls}
    for round_number in range(rounds):
        for name, url in urls.items():
            runs[name].append(parse_wrk(name, wrk(url, duration, connections)))
            print(f"  round {round_number + 1}/{rounds}, {name}: {runs[name][-1].requests_per_s:.0f} requests/s, "
                  f"{runs[name][-1].errors} errors", flush=True)
    return [Load(target=name, requests_per_s=statistics.median(r.requests_per_s for r in loads),
                 p50_ms=statistics.median(r.p50_ms for r in loads), p99_ms=statistics.median(r.p99_ms for r in loads),
                 requests=sum(r.requests for r in loads), non_2xx_3xx=sum(r.non_2xx_3xx for r in loads),
                 socket_errors=sum(r.socket_errors for r in loads))
            for name, loads in runs.items()]


# --- the run -----------------------------------------------------------------------

def app_copy(work: Path, tag: str) -> Path:
    """The example app with another greeting: a code-only change."""
    app = work / f"app-{tag}"
    shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
    module = app / "greeting.py"
    module.write_text(module.read_text().replace("Hello from greeting", f"Hello from bench {tag}"))
    return app


def start_host(image: str, ports: tuple[int, ...] = (22, 80)) -> throwaway.Host:
    """A throwaway host whose apt keeps its packages in a directory of its own.

    Throwaway hosts share one directory of downloaded .deb files (a bind mount), and
    with it apt's lock on that directory: apt on several hosts at once (a cold deploy
    to N hosts, or a test suite running next to this) fails with "Could not get lock
    /var/cache/apt/archives/lock". Each bench host gets a private copy of the shared
    files instead (made before anything is timed), so nothing is downloaded twice and
    the shared directory is only read."""
    host = throwaway.start_host(image, labels=LABELS, ports=ports)
    try:
        host.exec(f"mkdir -p {APT_ARCHIVES}/partial && "
                  f"find /var/cache/apt/archives -maxdepth 1 -name '*.deb' -exec cp -t {APT_ARCHIVES} {{}} + && "
                  f"echo 'Dir::Cache::archives \"{APT_ARCHIVES}/\";' > /etc/apt/apt.conf.d/91bench-archives")
    except Exception:
        host.remove()
        raise
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=4, help="N, the number of hosts deployed at once (default 4)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk load per target (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's open connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="no-op, code-only and floor runs per host count; medians are reported (default 3)")
    parser.add_argument("--serving-rounds", type=int, default=3,
                        help="wrk rounds over the four targets, interleaved; medians are reported (default 3)")
    parser.add_argument("--release", default="bookworm", choices=throwaway.RELEASES)
    args = parser.parse_args()
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (it is compared with 1 host)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `apt-get install -y wrk`.")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the hosts below
    image = throwaway.ensure_image(args.release)
    started: list[throwaway.Host] = []
    sizes = [1, args.hosts]
    deploys: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    cold: dict[int, Run] = {}
    noop_runs: dict[int, list[Run]] = {size: [] for size in sizes}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-performance-") as tmp:
            work = Path(tmp)
            # The 1-host deploy also serves the load test, so it publishes the scaffolding's ports.
            single = start_host(image, ports=(22, 80, FLASK_PORT, GUNICORN_PORT, CEILING_PORT))
            started.append(single)
            inventories = {1: throwaway.write_group_inventory(work / "inventory_1.py", {"app_servers": [(single, {})]})}
            step("cold first deploy, 1 host")
            cold[1] = pyinfra(inventories[1])
            many = []
            for _ in range(args.hosts):
                many.append(start_host(image))
                started.append(many[-1])
            inventories[args.hosts] = throwaway.write_group_inventory(
                work / f"inventory_{args.hosts}.py", {"app_servers": [(h, {}) for h in many]})
            step(f"cold first deploy, {args.hosts} hosts at once")
            cold[args.hosts] = pyinfra(inventories[args.hosts])

            for round_number in range(args.rounds):
                for size in sizes:
                    inventory, times = inventories[size], deploys[size]
                    step(f"round {round_number + 1}/{args.rounds}, {size} host(s): code-only redeploy, no-op, floor")
                    data = {"app_source": str(app_copy(work, f"{size}-{round_number}"))}
                    times.setdefault("code-only redeploy", []).append(pyinfra(inventory, data=data).seconds)
                    noop = pyinfra(inventory, data=data)
                    if noop.changed_operations():
                        raise SystemExit(f"the no-op run on {size} host(s) changed {noop.changed_operations()}")
                    times.setdefault("no-op re-run", []).append(noop.seconds)
                    noop_runs[size].append(noop)
                    times.setdefault("pyinfra floor", []).append(pyinfra(inventory, deploy="bench/floor.py").seconds)
            for host in many:
                host.remove()

            step("serving: back to the example app with the deploy's defaults, then wrk")
            pyinfra(inventories[1])
            urls = set_up_serving(single)
            loads = measure_serving(urls, args.duration, args.connections, args.serving_rounds)
    finally:
        for host in started:
            host.remove()

    # The no-op run of median wall time, for its breakdown.
    noops = {size: sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2] for size, runs in noop_runs.items()}
    report(args, cold, noops, deploys, loads)


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- the report --------------------------------------------------------------------

def report(args, cold: dict[int, Run], noops: dict[int, Run], deploys, loads: list[Load]) -> None:
    n = args.hosts
    med = {size: {name: statistics.median(values) for name, values in times.items()} for size, times in deploys.items()}
    for size, run in cold.items():
        med[size]["cold first deploy"] = run.seconds
    kinds = ["cold first deploy", "no-op re-run", "code-only redeploy", "pyinfra floor"]
    splits = {size: breakdown(run) for size, run in cold.items()}
    noop_splits = {size: breakdown(run) for size, run in noops.items()}
    stack, flask, gunicorn, ceiling = loads
    ratios = {
        "noop_floor_1": med[1]["no-op re-run"] / med[1]["pyinfra floor"],
        "noop_floor_n": med[n]["no-op re-run"] / med[n]["pyinfra floor"],
        "noop_hosts": med[n]["no-op re-run"] / med[1]["no-op re-run"],
        "vs_flask": stack.requests_per_s / flask.requests_per_s,
        "vs_gunicorn": stack.requests_per_s / gunicorn.requests_per_s,
        "vs_ceiling": stack.requests_per_s / ceiling.requests_per_s,
    }
    errors = sum(load.errors for load in loads)
    goals = [
        (f"no-op re-run <= {GOALS['noop_floor']:g}x pyinfra's floor (1 host)", ratios["noop_floor_1"],
         ratios["noop_floor_1"] <= GOALS["noop_floor"]),
        (f"no-op re-run <= {GOALS['noop_floor']:g}x pyinfra's floor ({n} hosts)", ratios["noop_floor_n"],
         ratios["noop_floor_n"] <= GOALS["noop_floor"]),
        (f"{n} hosts no-op <= {GOALS['noop_hosts']:g}x 1 host", ratios["noop_hosts"],
         ratios["noop_hosts"] <= GOALS["noop_hosts"]),
        (f"serving >= {GOALS['vs_flask']:g}x Flask's built-in server", ratios["vs_flask"],
         ratios["vs_flask"] >= GOALS["vs_flask"]),
        (f"serving >= {GOALS['vs_ceiling']:.0%} of nginx's ceiling", ratios["vs_ceiling"],
         ratios["vs_ceiling"] >= GOALS["vs_ceiling"]),
        ("zero errors under load (all four targets)", float(errors), errors == 0),
    ]

    lines = [(f"\nDebian {args.release}; deploy times: cold once, others median of {args.rounds} rounds; "
              f"wrk -t2 -c{args.connections} -d{args.duration}s --latency, "
              f"median of {args.serving_rounds} interleaved rounds"),
             "", "1. Deploy speed (wall time of `pyinfra ... -y`)",
             f"  {'':<22}{'1 host':>9}{f'{n} hosts':>10}{f'{n} / 1':>9}"]
    for kind in kinds:
        one, many = med[1][kind], med[n][kind]
        lines.append(f"  {kind:<22}{one:>8.1f}s{many:>9.1f}s{many / one:>8.2f}x")
    lines.append(f"  {'no-op / floor':<22}{ratios['noop_floor_1']:>8.2f}x{ratios['noop_floor_n']:>9.2f}x")
    lines += ["", "2. Serving (GET /, same host, same load, one after the other)",
              f"  {'':<32}{'requests/s':>11}{'p50':>10}{'p99':>10}{'requests':>10}{'errors':>8}"]
    for load in loads:
        lines.append(f"  {load.target:<32}{load.requests_per_s:>11.0f}{load.p50_ms:>8.2f}ms{load.p99_ms:>8.2f}ms"
                     f"{load.requests:>10}{load.errors:>8}")
    lines.append(f"  stack / Flask built-in: {ratios['vs_flask']:.2f}x;  stack / gunicorn: {ratios['vs_gunicorn']:.2f}x;  "
                 f"stack / nginx ceiling: {ratios['vs_ceiling']:.0%}")
    for load in loads:
        if load.errors:
            lines.append(f"  ERRORS {load.target}: {load.non_2xx_3xx} non-2xx/3xx, {load.socket_errors} socket errors")
    lines += ["", "3. Where the cold deploy spends its time (and, for comparison, the median no-op re-run)",
              f"  {'':<40}{'cold, 1':>9}{f'cold, {n}':>10}{'no-op, 1':>10}{f'no-op, {n}':>11}"]
    for group in GROUP_ORDER:
        values = [splits[1][0][group], splits[n][0][group], noop_splits[1][0][group], noop_splits[n][0][group]]
        if any(values):
            lines.append(f"  {group:<40}{values[0]:>8.1f}s{values[1]:>9.1f}s{values[2]:>9.1f}s{values[3]:>10.1f}s")
    lines.append(f"  {'total':<40}{cold[1].seconds:>8.1f}s{cold[n].seconds:>9.1f}s"
                 f"{noops[1].seconds:>9.1f}s{noops[n].seconds:>10.1f}s")
    for label, ops in (("cold, 1 host", splits[1][1]), (f"cold, {n} hosts", splits[n][1])):
        slowest = sorted(ops.items(), key=lambda item: -item[1])[:4]
        lines.append(f"  slowest operations ({label}): " + "; ".join(f"{name[:70]} {sec:.1f}s" for name, sec in slowest))
    for size in (1, n):
        count = sum(1 for _, line in noops[size].marks if "operation:" in line)
        seconds = sum(noop_splits[size][1].values())
        lines.append(f"  no-op re-run, {size} host{'s' if size > 1 else ''}: {count} operations took {seconds:.1f}s "
                     f"({1000 * seconds / max(count, 1):.0f} ms each); before them, start-up, connect and "
                     f"deploy.py's facts {noop_splits[size][0][STARTUP] + noop_splits[size][0][PREPARE]:.1f}s")
    lines += ["", "Goals"]
    for text, value, met in goals:
        lines.append(f"  {'met    ' if met else 'NOT MET'}  {text}: {value:.2f}")
    print("\n".join(lines))

    RESULTS.mkdir(parents=True, exist_ok=True)
    for kind, runs in (("cold", cold), ("noop", noops)):
        for size, run in runs.items():
            (RESULTS / f"{kind}-{size}.log").write_text(
                "".join(f"{t:8.2f}s  {line}\n" for t, line in run.marks) + "\n" + run.output)
    write_csv(RESULTS / "performance.csv", args, med, kinds, ratios, loads, splits, noop_splits, goals)
    chart(RESULTS / "performance.png", args, med, kinds, loads, splits, ratios)
    print(f"\nWrote {RESULTS / 'performance.csv'}, {RESULTS / 'performance.png'} and the output of the cold "
          f"and median no-op runs, with times ({RESULTS}/cold-*.log, noop-*.log)")


def write_csv(path, args, med, kinds, ratios, loads, splits, noop_splits, goals) -> None:
    n = args.hosts
    rows = [("section", "metric", "subject", "value", "unit")]
    for kind in kinds:
        for size in (1, n):
            rows.append(("deploy", kind, f"{size} hosts", f"{med[size][kind]:.2f}", "s"))
    rows += [("deploy", "no-op / floor", "1 hosts", f"{ratios['noop_floor_1']:.3f}", "x"),
             ("deploy", "no-op / floor", f"{n} hosts", f"{ratios['noop_floor_n']:.3f}", "x")]
    for kind in kinds:
        rows.append(("deploy", f"{kind}, {n} hosts / 1 host", "", f"{med[n][kind] / med[1][kind]:.3f}", "x"))
    for load in loads:
        rows += [("serving", "requests/s", load.target, f"{load.requests_per_s:.1f}", "1/s"),
                 ("serving", "p50", load.target, f"{load.p50_ms:.3f}", "ms"),
                 ("serving", "p99", load.target, f"{load.p99_ms:.3f}", "ms"),
                 ("serving", "requests", load.target, str(load.requests), ""),
                 ("serving", "errors", load.target, str(load.errors), "")]
    rows += [("serving", "stack / Flask built-in", "", f"{ratios['vs_flask']:.3f}", "x"),
             ("serving", "stack / gunicorn", "", f"{ratios['vs_gunicorn']:.3f}", "x"),
             ("serving", "stack / nginx ceiling", "", f"{ratios['vs_ceiling']:.3f}", "x")]
    for section, split in (("cold breakdown", splits), ("no-op breakdown", noop_splits)):
        for size in (1, n):
            for group, seconds in split[size][0].items():
                rows.append((section, group, f"{size} hosts", f"{seconds:.2f}", "s"))
    for text, value, met in goals:
        rows.append(("goal", text, "met" if met else "not met", f"{value:.3f}", ""))
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def chart(path, args, med, kinds, loads, splits, ratios) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = args.hosts
    fig, (deploy_ax, serve_ax, cold_ax) = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [4, 3, 5]})

    labels = ["cold", "no-op", "code-only", "pyinfra\nfloor"]
    width = 0.38
    for offset, size, color in ((-width / 2, 1, "#4c72b0"), (width / 2, n, "#dd8452")):
        values = [med[size][kind] for kind in kinds]
        bars = deploy_ax.bar([i + offset for i in range(len(kinds))], values, width, color=color,
                             label=f"{size} host{'s' if size > 1 else ''}")
        deploy_ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values],
                            fontsize=7, padding=1)
    deploy_ax.set_yscale("log")
    deploy_ax.set_xticks(range(len(kinds)), labels, fontsize=8)
    deploy_ax.set_ylabel("seconds (log)", fontsize=8)
    deploy_ax.set_title(f"Deploy wall time\nno-op/floor {ratios['noop_floor_1']:.1f}x, "
                        f"no-op {n}/1 hosts {ratios['noop_hosts']:.2f}x", fontsize=9)
    deploy_ax.legend(fontsize=7, loc="upper right")
    deploy_ax.tick_params(labelsize=7)
    deploy_ax.margins(y=0.15)

    names = ["nginx ->\nuWSGI", "nginx ->\nFlask dev", "nginx ->\ngunicorn", "nginx\nreturn 200"]
    bars = serve_ax.bar(names, [load.requests_per_s for load in loads],
                        color=["#55a868", "#c44e52", "#8172b3", "#8c8c8c"])
    serve_ax.bar_label(bars, labels=[f"{load.requests_per_s:.0f}/s\np99 {load.p99_ms:.0f} ms"
                                     + (f"\n{load.errors} errors" if load.errors else "") for load in loads],
                       fontsize=7, padding=1)
    serve_ax.set_ylabel("requests/s", fontsize=8)
    serve_ax.set_title(f"Serving GET / (wrk -c{args.connections}, {args.serving_rounds} x {args.duration}s, medians)\n"
                       f"{ratios['vs_flask']:.1f}x Flask dev, {ratios['vs_gunicorn']:.2f}x gunicorn, "
                       f"{ratios['vs_ceiling']:.0%} of nginx", fontsize=9)
    serve_ax.tick_params(labelsize=7)
    serve_ax.margins(y=0.25)

    groups = [g for g in GROUP_ORDER if splits[1][0][g] or splits[n][0][g]]
    colors = plt.get_cmap("tab10").colors
    rows = ["1 host", f"{n} hosts"]
    for index, size in enumerate((1, n)):
        left = 0.0
        for color, group in zip(colors, groups):
            seconds = splits[size][0][group]
            cold_ax.barh(index, seconds, left=left, color=color, label=group if index == 0 else None)
            if seconds >= 8:
                cold_ax.text(left + seconds / 2, index, f"{seconds:.0f}", ha="center", va="center", fontsize=7)
            left += seconds
    cold_ax.set_yticks([0, 1], rows, fontsize=8)
    cold_ax.invert_yaxis()
    cold_ax.set_xlabel("seconds", fontsize=8)
    cold_ax.set_title("Cold first deploy: where the time goes", fontsize=9)
    cold_ax.tick_params(labelsize=7)
    cold_ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)

    fig.tight_layout()
    fig.savefig(path, dpi=85, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
