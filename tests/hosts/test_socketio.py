"""Flask-SocketIO apps on one fork of the deployed host (marker `features`,
docs/socketio.md): tests/apps/socketio with python-socketio clients over real
WebSockets through nginx, a broadcast across instances, an emit from a Celery task,
and a code redeploy while they talk. Without a host: tests/steps/test_socketio.py.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import socketio

from tests.conftest import REPO_ROOT, get, run_deploy
from tests.steps.test_socketio import SOCKETIO, WORKERS


class Chatter:
    """A python-socketio client as an app's users run it: it reconnects by itself;
    `talk` sends numbered echoes one after the other, each sent again (after the
    client reconnected) until its answer came: an echo is lost when it never does."""

    def __init__(self, url: str):
        self.client = socketio.Client(reconnection_delay=0.5, reconnection_delay_max=1)
        self.news: list[dict] = []
        self.answers: dict[int, dict] = {}
        self.resent = 0
        self.connects = 0
        self.client.on("news", self.news.append)
        self.client.on("connect", self._connected)
        self.client.connect(url, wait_timeout=10)
        self._stop = threading.Event()

    def _connected(self):
        self.connects += 1

    def echo(self, number: int, deadline: float) -> dict:
        while True:
            try:
                answer = self.client.call("echo", f"message {number}", timeout=3)
                assert answer["echo"] == f"message {number}", answer
                self.answers[number] = answer
                return answer
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
                if time.monotonic() > deadline:
                    raise
                self.resent += 1
                time.sleep(0.2)

    def talk(self, seconds: float) -> threading.Thread:
        def run():
            deadline, number = time.monotonic() + seconds, max(self.answers, default=-1) + 1
            while not self._stop.is_set():
                self.echo(number, deadline)
                number += 1
                time.sleep(0.05)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> None:
        self._stop.set()
        thread.join(timeout=30)
        self._stop.clear()

    def transport(self) -> str:
        return self.client.transport()


def wait_for(what: str, condition, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.1)



def broadcast(chatters: list[Chatter], text: str) -> int:
    """A shout from the first client until every client has it as news, sent again
    (numbered) until then: an instance subscribes to the queue on its first
    connection, and Redis pub/sub keeps nothing for a subscriber not there yet. The
    attempt that reached them all (from 1)."""
    for attempt in range(5):
        chatters[0].client.emit("shout", f"{text} {attempt}")
        news = {"text": f"{text} {attempt}", "pid": chatters[0].answers[0]["pid"]}
        try:
            wait_for("the broadcast", lambda: all(news in c.news for c in chatters), 2)
            return attempt + 1
        except AssertionError:
            continue
    raise AssertionError(f"the broadcast never reached every client: {[c.news for c in chatters]}")

@pytest.mark.features
def test_flask_socketio_over_websockets_on_every_instance_through_a_redeploy(fork, tmp_path):
    source = tmp_path / "socketio"
    shutil.copytree(REPO_ROOT / "tests/apps/socketio", source)
    data = {**SOCKETIO, "app_source": str(source), "workers": WORKERS}
    run_deploy(fork, tmp_path, data=data)
    url = f"http://127.0.0.1:{fork.http_port}"
    chatters: list[Chatter] = []
    try:
        # New clients land on random instances: as many as it takes to have one on
        # each (two, on this host).
        while len({c.echo(0, time.monotonic() + 10)["pid"] for c in chatters}) < 2:
            assert len(chatters) < 20, "every client on one instance"
            chatters.append(Chatter(url))
        for chatter in chatters:
            wait_for("the upgrade to WebSocket", lambda chatter=chatter: chatter.transport() == "websocket")
            assert chatter.echo(1, time.monotonic() + 10)["version"] == "v1"
        pids = {c.answers[0]["pid"] for c in chatters}
        print(f"\n{len(chatters)} clients on the instances {sorted(pids)}, all on websocket")

        # A broadcast from a client of one instance reaches the clients of all of them.
        print(f"broadcast: received by every client at attempt {broadcast(chatters, 'hello everyone')}")
        # An emit from the Celery worker (another process) reaches every client too.
        assert get(url + "/notify/from-celery").text == "queued\n"
        wait_for("the worker's emit", lambda: all(any(n.get("from") == "celery" and n["text"] == "from-celery"
                                                      for n in c.news) for c in chatters), 20)

        # Nothing to do the second time, and the clients never notice.
        again = run_deploy(fork, tmp_path, data=data)
        assert again.changed_operations() == [], again.output[-3000:]
        assert [c.connects for c in chatters] == [1] * len(chatters)

        # A code redeploy while every client keeps talking.
        chat = source / "chat.py"
        chat.write_text(chat.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
        threads = [c.talk(120) for c in chatters]
        run_deploy(fork, tmp_path, data=data)
        # Code only: the instances were replaced one at a time (a chain reload).
        assert "mode=chain" in fork.exec("/srv/greeting/bin/release-tool history --last 1")
        wait_for("every client on the new code", lambda: all(
            c.answers[max(c.answers)]["version"] == "v2" for c in chatters), 30)
        for chatter, thread in zip(chatters, threads):
            chatter.stop(thread)
        for chatter in chatters:
            numbers = sorted(chatter.answers)
            assert numbers == list(range(len(numbers))), "an echo was never answered"
            assert chatter.client.connected and chatter.transport() == "websocket"
        print(f"redeploy: {sum(len(c.answers) for c in chatters)} echoes answered, none lost; "
              f"{sum(c.resent for c in chatters)} sent again after a reconnection; reconnections "
              f"{[c.connects - 1 for c in chatters]}")
        assert any(c.connects > 1 for c in chatters), "no instance was replaced"
    finally:
        for chatter in chatters:
            chatter.client.disconnect()
    _without_a_queue_client_never_goes_live(fork, tmp_path)


# Flask-SocketIO without the `redis` package in its venv imports and serves, and only
# logs "Cannot publish to redis... giving up" at each broadcast.
NO_QUEUE_CLIENT = """import os

from flask import Flask
from flask_socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent_uwsgi", message_queue=os.environ["REDIS_URL"])


@app.get("/")
def index():
    return "no queue client"
"""


def _without_a_queue_client_never_goes_live(fork, tmp_path):
    """A Socket.IO release whose venv cannot reach its message queue is refused
    before its switch: the live release keeps serving."""
    source = tmp_path / "no-queue-client"
    source.mkdir()
    (source / "app.py").write_text(NO_QUEUE_CLIENT)
    requirements = (REPO_ROOT / "tests/apps/socketio/requirements.txt").read_text()
    (source / "requirements.txt").write_text("\n".join(
        line for line in requirements.splitlines() if not line.lower().startswith("celery")) + "\n")
    live = fork.exec("readlink /srv/greeting/current").strip()
    run = run_deploy(fork, tmp_path, data={**SOCKETIO, "app_source": str(source), "app_entry": "app:app"},
                     check=False)
    assert run.returncode != 0
    assert "socketio: the release's venv has no redis package" in run.output, run.output[-3000:]
    assert "failed its check before the switch" in run.output
    assert fork.exec("readlink /srv/greeting/current").strip() == live
    print(f"without a queue client: refused before the switch in {run.seconds:.1f}s")
