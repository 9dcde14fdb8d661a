"""uWSGI's entry point (`app_entry = "wsgi:app"`)."""

from greeting import app

if __name__ == "__main__":
    # The tutorials' first smoke test, without nginx: `python wsgi.py`.
    app.run(host="127.0.0.1", port=5000)
