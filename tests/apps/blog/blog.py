"""A second app, mounted under a URL prefix: its links and redirects must carry it."""

from flask import Flask, jsonify, redirect, request, url_for

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
