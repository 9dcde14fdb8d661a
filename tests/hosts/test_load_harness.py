"""The load the real-host tests put on a site (tests/conftest.py's `Load`), host-less: a
request the server closes unanswered on a reused keep-alive connection (nginx closing its
idle connections as it reloads) is sent again once on a new one, as browsers do, and
counted; a server that closes every connection unanswered is a failure every time."""

from __future__ import annotations

import socket
import threading

from tests.conftest import Load

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"


def serve(answers_per_connection: int):
    """A local server answering that many requests on each connection, then closing it as the
    next request arrives (0: closes every connection unanswered). Returns (url, stop)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stopping = threading.Event()

    def connection(conn):
        with conn:
            for _ in range(answers_per_connection + 1):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                if answers_per_connection == 0 or _ == answers_per_connection:
                    return  # the request read, no answer: closed
                conn.sendall(ANSWER)

    def accept():
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=connection, args=(conn,), daemon=True).start()
        listener.close()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/", stopping.set


def test_a_reused_connection_closed_unanswered_is_sent_again_once_and_counted():
    url, stop = serve(answers_per_connection=3)
    try:
        with Load(url, threads=1, max_seconds=1.5, interval=0.05) as load:
            pass
    finally:
        stop()
    assert load.failures == [] and load.ok > 10 and load.retried > 2, load.report("closing after 3")
    assert "sent again on a new connection" in load.report("closing after 3")


def test_a_server_that_answers_nothing_fails_every_request():
    url, stop = serve(answers_per_connection=0)
    try:
        with Load(url, threads=1, max_seconds=1, interval=0.05) as load:
            pass
    finally:
        stop()
    assert load.ok == 0 and load.retried == 0 and len(load.failures) > 5
    assert all(failure.startswith("ConnectionError: ") for failure in load.failures), load.failures[:3]
