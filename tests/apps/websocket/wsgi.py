"""A WebSocket echo next to ordinary pages, on uWSGI's own WebSocket API (gevent)."""

import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "websocket app\n"


@app.route("/pid")
def pid():
    return str(os.getpid())


# websocket=True: werkzeug routes upgrade requests only to rules that accept them.
@app.route("/ws", websocket=True)
def echo():
    import uwsgi  # only exists inside uWSGI

    uwsgi.websocket_handshake()
    while True:
        try:
            message = uwsgi.websocket_recv()
        except OSError:
            return ""
        uwsgi.websocket_send(b"echo from %d: " % os.getpid() + message)
