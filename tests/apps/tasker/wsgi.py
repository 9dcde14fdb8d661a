from tasker import app  # noqa: F401
