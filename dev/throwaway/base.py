"""What every part of the throwaway hosts shares: the label on what they make, where
they cache, and the Docker engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import docker
import docker.errors

LABEL = "io.pyinfra-flask.throwaway"
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("THROWAWAY_CACHE", Path.home() / ".cache" / "pyinfra-flask-throwaway"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


class ThrowawayError(RuntimeError):
    pass


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise ThrowawayError(
            f"No Docker engine answers ({exc}). Start one: `./run test` (it starts one)."
        ) from exc
