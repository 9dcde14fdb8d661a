"""Serving throughput, for bench.performance: the deployed stack next to Flask's built-in
server, gunicorn and nginx's own ceiling, on the 1-host deploy, loaded with wrk.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass

from bench.deploy_speed import APP, ROOT
from dev import throwaway

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
