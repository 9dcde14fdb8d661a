"""A Flask-SocketIO app written the way its docs say, deployed with `socketio: true`
(tests/hosts/test_socketio.py): an echo, a broadcast, and a Celery task (worker.py) that
emits to the clients through the message queue (the host's Redis, REDIS_URL)."""

import os

from flask import Flask
from flask_socketio import SocketIO, emit

from worker import REDIS_URL, announce

VERSION = "v1"

app = Flask(__name__)
# async_mode as Flask-SocketIO's docs say for uWSGI; the message queue carries
# broadcasts (and emits from workers) to the clients of every instance.
socketio = SocketIO(app, async_mode="gevent_uwsgi", message_queue=REDIS_URL)


@app.route("/")
def index():
    return f"chat {VERSION} pid {os.getpid()}\n"


@app.route("/notify/<text>")
def notify(text):
    announce.delay(text)
    return "queued\n"


@socketio.on("echo")
def echo(data):
    return {"echo": data, "pid": os.getpid(), "version": VERSION}


@socketio.on("shout")
def shout(data):
    emit("news", {"text": data, "pid": os.getpid()}, broadcast=True)
