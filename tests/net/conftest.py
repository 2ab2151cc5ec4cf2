"""Fixtures for broker tests: a real broker process per test, over tcp or ipc,
and helpers to run client scripts as real processes."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import pytest
import zmq

import ringcast
from ringcast import _codec as C
from ringcast.broker import Broker
from ringcast.router import Router

# Child processes import the very ringcast this test run imports: the
# installed wheel in CI, the in-place build in a checkout.
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ringcast.__file__)))
ENV = dict(os.environ, PYTHONPATH=_PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
# The fixtures' broker and clients: a session ends after 3 x HEARTBEAT of
# silence, which a process starved on a loaded 2-core runner could reach at
# 0.2 s (ConnectionLost from a plain stats() call). Scripts that are killed on
# purpose use 0.2 s themselves, so dead peers are still found quickly.
HEARTBEAT = 0.5

if sys.platform == "win32":  # ringcast.aio needs add_reader (see aio_client._open)
    with warnings.catch_warnings():  # event loop policies are deprecated in 3.14
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())


class BrokerProcess:
    """``python -m ringcast broker`` in a subprocess; ``url`` is where it listens."""

    def __init__(self, bind, *extra, env=None):
        self.bind = bind
        self.extra = extra
        self.env = dict(ENV, **(env or {}))
        self.proc = None
        self.url = None

    def start(self, timeout=15.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringcast", "broker", "--bind", self.bind,
             "--heartbeat", str(HEARTBEAT), *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env, text=True)
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("ringcast broker listening on ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"broker did not start: {line!r}")
        self.url = line.split()[-1]
        return self

    def kill(self):
        self.proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        self.proc.wait(10)
        self.proc.stdout.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture(params=["tcp", "ipc"])
def transport(request):
    return request.param


@pytest.fixture
def endpoint(transport):
    if transport == "tcp":
        yield "tcp://127.0.0.1:0"
    else:
        if not zmq.has("ipc"):
            pytest.skip("this libzmq has no ipc:// transport")
        d = tempfile.mkdtemp(prefix="rc-")
        yield f"ipc://{d}/broker.sock"


@pytest.fixture
def broker(endpoint):
    b = BrokerProcess(endpoint).start()
    yield b
    b.stop()


def run_script(code, *args, **kw):
    """Start ``code`` (a Python snippet) as a client process; stdout is a pipe."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True,
                            **kw)


@pytest.fixture
def procs():
    """Client processes started by a test; killed at teardown if still running."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdout, p.stderr):
            if f:
                f.close()


@pytest.fixture
def client(broker):
    from ringcast.client import connect

    c = connect(broker.url, heartbeat=HEARTBEAT, timeout=10)
    yield c
    c.close()


@pytest.fixture
def zsocket():
    """Raw ZeroMQ sockets, closed with linger=0."""
    ctx = zmq.Context.instance()
    socks = []

    def make(kind):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(linger=0)


def hello(sock, name="raw", version=C.PROTOCOL_VERSION, heartbeat_ms=10000):
    """Speak the handshake by hand on a connected DEALER; returns WELCOME."""
    w = C.Writer()
    w.record(C.HELLO, version, heartbeat_ms, name)
    sock.send(w.take())
    assert sock.poll(10000), "no answer to HELLO"
    welcome = C.Reader(sock.recv()).events()[0]
    assert welcome[0] == C.WELCOME, welcome
    return welcome


def raw_session(zsocket, url, name="raw", identity=None, **kw):
    """A DEALER with a session, for tests that write records themselves."""
    sock = zsocket(zmq.DEALER)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(url)
    return sock, hello(sock, name, **kw)


def barrier(client, timeout=10):
    """Everything this client sent before is applied at the broker: the
    ordered stream is flushed first, then a STATS round trip follows it."""
    client.flush(timeout)
    return client.stats(timeout)


def take(source, n, batch=1000, ack=False, timeout=10):
    """The payloads of the next ``n`` messages of a subscription or consumer,
    in order; a consumer's are acked as they come with ``ack``."""
    got = []
    while len(got) < n:
        for m in source.recv_many(batch, timeout=timeout):
            got.append(m.payload)
            if ack:
                m.ack()
    return got


def wait_for(pred, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@pytest.fixture
def embedded():
    """``embedded(**broker_options)``: a broker thread over an embedded router
    (so tests can see its services and queues); both closed at teardown."""
    made = []

    def make(**kw):
        router = Router()
        broker = Broker("tcp://127.0.0.1:0", router=router, **kw).start()
        made.append((router, broker))
        return router, broker

    yield make
    for router, broker in made:
        broker.stop()
        router.close()


def start_again(url, timeout=10.0, **kw):
    """A new Broker on the endpoint of one just stopped: ZeroMQ closes the old
    listener on its own I/O thread after ``stop()`` returns, and on a busy
    machine a bind at once can still find the port taken (EADDRINUSE)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Broker(url, **kw).start()
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)   # poll the port: nothing signals its release


def serving(router, name, n=1, timeout=10.0):
    """Wait until ``n`` responders serve ``name`` on ``router`` (a remote
    SERVE is applied by the broker loop a moment after the client sent it)."""
    def ready():
        try:
            return len(router.service(name).responders) >= n
        except ringcast.errors.NoResponders:
            return False
    assert wait_for(ready, timeout), f"nobody serves {name!r}"
