"""A second app, mounted under a URL prefix: its links and redirects must carry it."""

import os

from flask import Flask, jsonify, redirect, request, url_for
from werkzeug.utils import secure_filename

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(
        app="blog",
        script_name=request.script_root,
        home=url_for("index"),
        post=url_for("post", slug="hello"),
        static=url_for("static", filename="blog.css"),
    )


@app.route("/posts/<slug>")
def post(slug):
    return f"post {slug}\n"


@app.route("/latest")
def latest():
    return redirect(url_for("post", slug="hello"))


@app.route("/upload", methods=["POST"])
def upload():
    """A user's upload, into the shared static/uploads/ (tests/hosts/test_file_backups.py)."""
    file = request.files["file"]
    name = secure_filename(file.filename)
    file.save(os.path.join(app.static_folder, "uploads", name))
    return url_for("static", filename=f"uploads/{name}") + "\n"
