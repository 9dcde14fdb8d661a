"""The example app: the tutorials' `greeting.py`, plus a page that shows where it runs."""

import os
import socket

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)

GREETING = "Hello from greeting, served by uWSGI behind nginx!"


@app.route("/")
def index():
    return GREETING + "\n"


@app.route("/notes", methods=["GET", "POST"])
def notes():
    # Data lives in the instance folder, which the deploy keeps outside the
    # releases (shared_paths), so notes survive redeploys and rollbacks.
    path = os.path.join(app.instance_path, "notes.txt")
    if request.method == "POST":
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(request.get_data(as_text=True).replace("\n", " ") + "\n")
        return "saved\n", 201
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), 200, {"Content-Type": "text/plain; charset=utf-8"}
    except FileNotFoundError:
        return "", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.route("/info")
def info():
    # Handy when debugging a deploy: which host and worker answered, and what
    # nginx passed through (SCRIPT_NAME matters for apps mounted under a prefix).
    return jsonify(
        host=socket.gethostname(),
        pid=os.getpid(),
        script_name=request.environ.get("SCRIPT_NAME", ""),
        static_url=url_for("static", filename="style.css"),
        server_software=request.environ.get("SERVER_SOFTWARE", ""),
    )
