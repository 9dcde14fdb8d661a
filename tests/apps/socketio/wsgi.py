from chat import app  # noqa: F401
