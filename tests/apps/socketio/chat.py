"""A Flask-SocketIO app written the way its docs say, deployed with `socketio: true`
(tests/test_socketio.py): an echo, a broadcast, and a Celery task that emits to the
clients through the message queue (the host's Redis, REDIS_URL)."""

import os

from celery import Celery
from flask import Flask
from flask_socketio import SocketIO, emit

VERSION = "v1"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Flask(__name__)
# async_mode as Flask-SocketIO's docs say for uWSGI; the message queue carries
# broadcasts (and emits from workers) to the clients of every instance.
socketio = SocketIO(app, async_mode="gevent_uwsgi", message_queue=REDIS_URL)
celery = Celery("chat", broker=REDIS_URL)
celery.conf.broker_connection_retry_on_startup = True


@app.route("/")
def index():
    return f"chat {VERSION} pid {os.getpid()}\n"


@app.route("/notify/<text>")
def notify(text):
    announce.delay(text)
    return "queued\n"


@celery.task
def announce(text):
    """Run by the Celery worker, outside any web process: the message queue takes it
    to the clients wherever they are connected."""
    SocketIO(message_queue=REDIS_URL).emit("news", {"text": text, "from": "celery"})


@socketio.on("echo")
def echo(data):
    return {"echo": data, "pid": os.getpid(), "version": VERSION}


@socketio.on("shout")
def shout(data):
    emit("news", {"text": data, "pid": os.getpid()}, broadcast=True)
