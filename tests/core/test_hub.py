"""core/hub.py: the hub probe that lets an offline export fail at once."""

import os
import socket
import threading
import time

import pytest

from llmc.core.hub import _reachable


@pytest.fixture
def listening():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_reachable_probes_the_endpoint_or_its_proxy(listening, monkeypatch):
    for key in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(key)
    assert _reachable(listening + "/some/path", timeout=1.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused at once
        start = time.monotonic()
        assert not _reachable(f"http://127.0.0.1:{closed.getsockname()[1]}", timeout=3.0)
        assert time.monotonic() - start < 1.0
    monkeypatch.setenv("https_proxy", listening)  # behind a proxy the hub is reached through it
    assert _reachable("https://hub.invalid", timeout=1.0)
    monkeypatch.setenv("no_proxy", "hub.invalid")
    assert not _reachable("https://hub.invalid", timeout=1.0)


def test_reachable_gives_up_on_a_hanging_connect(monkeypatch):
    release = threading.Event()

    def black_hole(*args, **kwargs):
        release.wait(30)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    start = time.monotonic()
    try:
        assert not _reachable("https://huggingface.co", timeout=0.5)
        assert time.monotonic() - start < 1.5
    finally:
        release.set()
