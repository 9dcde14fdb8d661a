"""The Celery side: it never imports the web app (whose `gevent_uwsgi` mode exists
only under uWSGI) and emits through the message queue alone, as Flask-SocketIO's
docs say for external processes."""

import os

from celery import Celery
from flask_socketio import SocketIO

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
celery = Celery("worker", broker=REDIS_URL)
celery.conf.broker_connection_retry_on_startup = True


@celery.task
def announce(text):
    """Run by the Celery worker: the message queue takes it to the clients of every
    instance."""
    SocketIO(message_queue=REDIS_URL).emit("news", {"text": text, "from": "celery", "pid": os.getpid()})
