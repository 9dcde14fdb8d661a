"""A Flask app with a Celery worker on the host's Redis (`redis: true` hands it
REDIS_URL): tests/hosts/test_workers.py deploys it with a worker and a scheduled job."""

import os

from celery import Celery
from flask import Flask

VERSION = "v1"

app = Flask(__name__)
# Connected lazily: importing the app (the release tool's checks) needs no Redis.
broker = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
celery = Celery("tasker", broker=broker, backend=broker)
celery.conf.broker_connection_retry_on_startup = True


@celery.task
def version():
    """Run by the worker: the code it runs, and where."""
    return f"{VERSION} from worker pid {os.getpid()}"


@app.route("/")
def index():
    return f"tasker {VERSION}\n"


@app.route("/enqueue")
def enqueue():
    # Enqueued through Redis, run by the worker, its result read back from Redis.
    return version.delay().get(timeout=20) + "\n"


@app.route("/ticks")
def ticks():
    try:
        with open(os.path.join(app.instance_path, "ticks.log"), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""
