"""Manage the local throwaway demo host.

    python -m dev.throwaway up [--release bookworm|trixie]   # boot it (idempotent)
    python -m dev.throwaway down                             # remove it
    python -m dev.throwaway image [--release ...]            # only build the image

`up` records how to reach the host in .throwaway/local.json, which
inventories/local.py reads.
"""

import argparse
import json
import sys

import docker.errors

from dev.throwaway import REPO_ROOT, Host, ThrowawayError, docker_client, ensure_image, ssh_key, start_host

STATE = REPO_ROOT / ".throwaway" / "local.json"
DEMO_NAME = "pyinfra-flask-demo"


def up(release: str) -> None:
    client = docker_client()
    try:
        container = client.containers.get(DEMO_NAME)
        container.start()
        host = Host(container, DEMO_NAME, 0, 0, ssh_key()[0])
        host._refresh_ports()
        host.wait_until_ready()
        print(f"Demo host {DEMO_NAME} already exists; reusing it.")
    except docker.errors.NotFound:
        host = start_host(ensure_image(release), name=DEMO_NAME, labels={"io.pyinfra-flask.demo": "1"})
        print(f"Started demo host {DEMO_NAME} (Debian {release}).")
    STATE.parent.mkdir(exist_ok=True)
    STATE.write_text(json.dumps({"name": DEMO_NAME, "http_port": host.http_port, **host.inventory_data()}, indent=2))
    print(f"SSH: 127.0.0.1:{host.ssh_port}; HTTP will be served on {host.url}/")


def down() -> None:
    try:
        docker_client().containers.get(DEMO_NAME).remove(force=True, v=True)
        print(f"Removed demo host {DEMO_NAME}.")
    except docker.errors.NotFound:
        print("No demo host to remove.")
    STATE.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.throwaway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "image"])
    parser.add_argument("--release", default="bookworm", choices=["bookworm", "trixie"])
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.release)
        elif args.command == "down":
            down()
        else:
            print(ensure_image(args.release))
    except ThrowawayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
