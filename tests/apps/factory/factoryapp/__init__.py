"""A test app built by an application factory, as many Flask projects are."""

from flask import Flask


def create_app():
    app = Flask(__name__)

    @app.route("/")
    def index():
        return "made by create_app()\n"

    return app
