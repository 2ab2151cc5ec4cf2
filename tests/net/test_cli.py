"""The command line against a real broker: pub, sub, req, and a clean stop."""

import platform
import signal
import subprocess
import sys

import pytest
import zmq

from ringcast import Router
from ringcast.broker import Broker
from ringcast.client import connect

from .conftest import ENV, HEARTBEAT, barrier, run_script

pytestmark = pytest.mark.timeout(60)


def ringcast_cmd(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ringcast", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


needs_sigint = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_sub_pub_and_req_commands(broker, client, procs):
    sub = ringcast_cmd("sub", "cli.>", "--url", broker.url, "--count", "3")
    procs.append(sub)
    assert sub.stderr.readline().startswith("subscribed to cli.>")   # and applied
    pub = ringcast_cmd("pub", "cli.hello", "hi there", "--url", broker.url, "--count", "3")
    procs.append(pub)
    assert pub.wait(20) == 0
    out, _ = sub.communicate(timeout=20)
    assert out.splitlines() == [f"[{i}] cli.hello: hi there" for i in (1, 2, 3)]

    client.serve("upper", lambda m: m.payload.upper())
    barrier(client)
    req = ringcast_cmd("req", "upper", "sku-1", "--url", broker.url)
    procs.append(req)
    out, err = req.communicate(timeout=20)
    assert (req.returncode, out.strip()) == (0, "SKU-1")
    req = ringcast_cmd("req", "nobody", "x", "--url", broker.url)
    procs.append(req)
    out, err = req.communicate(timeout=20)
    assert req.returncode == 1 and "NoResponders" in err


def test_stats_command_prints_the_broker_statistics(broker, client):
    import json

    client.publish("s.x", b"1")
    client.flush()
    st = ringcast_cmd("stats", "--url", broker.url)
    out, _ = st.communicate(timeout=20)
    stats = json.loads(out)
    assert st.returncode == 0 and stats["subjects"] == {"s.x": 1} and stats["clients"] == 2


@needs_sigint
def test_broker_stops_cleanly_on_sigint(endpoint):
    b = ringcast_cmd("broker", "--bind", endpoint)
    line = b.stdout.readline()
    assert line.startswith("ringcast broker listening on ")
    b.send_signal(signal.SIGINT)
    assert b.wait(10) == 0
    b.stdout.close()
    b.stderr.close()


def test_embedded_broker_serves_remote_clients_of_an_existing_router(procs):
    """Broker(router=...) in a thread: in-process code and remote processes
    meet on one Router."""
    router = Router()
    local = router.subscribe("stock.>")
    router.serve("local.echo", lambda m: b"local:" + m.payload)
    with Broker("tcp://127.0.0.1:0", router=router, heartbeat=HEARTBEAT) as broker:
        assert broker.endpoints[0].startswith("tcp://127.0.0.1:")
        assert not broker.endpoints[0].endswith(":0")
        with connect(broker.endpoints[0], heartbeat=HEARTBEAT) as remote:
            remote_sub = remote.subscribe("stock.>")
            barrier(remote)
            router.publish("stock.low", b"from inside")      # embedded -> remote
            assert remote_sub.recv(timeout=5).payload == b"from inside"
            remote.publish("stock.out", b"from outside")     # remote -> embedded
            assert [local.recv(timeout=5).payload for _ in range(2)] == [
                b"from inside", b"from outside"]
            assert remote.request("local.echo", b"x", timeout=5).payload == b"local:x"
            child = run_script("""
import sys
from ringcast.client import connect
with connect(sys.argv[1]) as c:
    print(c.request("local.echo", b"child", timeout=5).payload.decode(), flush=True)
""", broker.endpoints[0])
            procs.append(child)
            assert child.stdout.readline().strip() == "local:child"
    router.close()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the tuning is glibc's mallopt")
def test_broker_process_heap_tuning_is_accepted_by_glibc():
    """``ringcast broker`` keeps freed heap instead of trimming it after every
    frame; mallopt answers 0 for a setting it refuses, so a wrong parameter
    code or value fails here. Run in a child: it changes the whole process."""
    code = "from ringcast.cli import keep_freed_heap; print(keep_freed_heap())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=ENV, timeout=30)
    assert out.stdout.strip() == "True", out.stderr
    # the environment's own glibc tuning wins (tests/net/test_bad_input.py uses it)
    for env in ({"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.top_pad=0"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(ENV, **env), timeout=30)
        assert out.stdout.strip() == "False", (env, out.stderr)


def test_broker_process_collects_young_garbage_less_often():
    """``ringcast broker`` (and the bench's broker) freeze what start-up left
    and raise the young-generation threshold; an embedded Broker leaves its
    host's collector alone. Run in a child: it changes the whole process."""
    code = ("import gc; from ringcast import Broker; from ringcast.cli import "
            "tune_broker_process as t; Broker('tcp://127.0.0.1:0'); "
            "print(gc.get_threshold()[0], gc.get_freeze_count()); t(); "
            "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=ENV, timeout=30)
    assert out.stdout.split("\n")[:2] == ["700 0", "20000 True"], out.stderr


def test_broker_refuses_a_negative_buffer_bound():
    p = ringcast_cmd("broker", "--bind", "tcp://127.0.0.1:0", "--max-buffer-bytes", "-1")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "--max-buffer-bytes" in err and "listening" not in out


# -- what a user may get wrong: one line on stderr, no traceback, a non-zero status ------
def one_line_error(p, timeout=30):
    """Wait for a ringcast command; its status and its one line of stderr."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"still running after {timeout} s: {p.args}\n{out}{err}") from None
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, (p.args, err)
    return p.returncode, lines[0], out


BROKER = ("broker", "--bind", "tcp://127.0.0.1:0")
BAD_ARGUMENTS = [
    # (argv, what the message names)
    (("pub", "a.b", "x", "--count", "-3"), "--count"),
    (("pub", "a.b", "x", "--count", "0"), "--count"),
    (("pub", "a.b", "x", "--count", "many"), "--count"),
    (("sub", "a.b", "--count", "-1"), "--count"),
    (("pub", "a.b", "x", "--timeout", "-1"), "--timeout"),
    (("req", "svc", "x", "--timeout", "nan"), "--timeout"),
    (("sub", "a.b", "--timeout", "soon"), "--timeout"),
    (("pub", "a.b", "x", "--url", "tcp://nowhere:99999"), "--url"),
    (("req", "svc", "x", "--url", "foo://x"), "--url"),
    (("stats", "--url", "tcp://127.0.0.1"), "--url"),
    (("sub", "a", "--url", "127.0.0.1:7450"), "--url"),
    (("broker", "--bind", "tcp://127.0.0.1:99999"), "--bind"),   # zmq would take 34463
    (("broker", "--bind", "foo://x"), "--bind"),
    (BROKER + ("--heartbeat", "0"), "--heartbeat"),
    (BROKER + ("--heartbeat", "-1"), "--heartbeat"),
    (BROKER + ("--max-message", "-5"), "--max-message"),
    (BROKER + ("--max-frame", "0"), "--max-frame"),
    (BROKER + ("--spin-us", "-5"), "--spin-us"),
    (BROKER + ("--data-dir", __file__), "--data-dir"),
    (("bench", "embedded-pubsub", "--duration", "nan"), "--duration"),
    (("bench", "embedded-pubsub", "--count", "100", "--no-progress",
      "--json", "/nonexistent-rc/out.json"), "--json"),
    (("nosuch",), "nosuch"),
]


def test_bad_arguments_are_one_line_errors_with_status_2():
    started = [(argv, what, ringcast_cmd(*argv)) for argv, what in BAD_ARGUMENTS]
    try:
        for argv, what, p in started:
            status, line, out = one_line_error(p)
            assert status == 2 and what in line and "error" in line, (argv, line)
            assert "listening" not in out and "ringcast x" not in out, (argv, out)
    finally:
        for _, _, p in started:
            if p.poll() is None:
                p.kill()
                p.communicate()


def dead_tcp_url():
    """A loopback port that was free a moment ago (nobody listens there)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "tcp://127.0.0.1:%d" % s.getsockname()[1]


def test_no_broker_is_a_one_line_error(tmp_path):
    """A dead tcp port and an ipc path nobody listens on: each command says
    that no broker answered, within its --timeout."""
    dead_tcp = dead_tcp_url()
    urls = [dead_tcp] + ([f"ipc://{tmp_path}/nobody.sock"] if zmq.has("ipc") else [])
    started = []
    for url in urls:
        for argv in (("pub", "a.b", "x"), ("sub", "a.>"), ("req", "svc", "x"), ("stats",)):
            started.append(ringcast_cmd(*argv, "--url", url, "--timeout", "0.5"))
    try:
        for p in started:
            status, line, _ = one_line_error(p)
            assert status == 1 and "ConnectionLost: no broker answered at" in line, line
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_what_the_broker_refuses_is_a_one_line_error(broker, client, procs):
    """Bad subjects and patterns, a request nobody answers in time."""
    client.serve("slow", lambda m: None, threaded=True)   # never replies
    barrier(client)
    cases = [
        (("pub", "a..b", "x"), "InvalidSubject"),
        (("pub", "a.*", "x"), "InvalidSubject"),
        (("sub", "a.>.b"), "InvalidSubject"),
        (("req", "a..b", "x"), "InvalidSubject"),
        (("req", "nobody", "x"), "NoResponders"),
        (("req", "slow", "x", "--timeout", "0.5"), "Timeout: request to 'slow' timed out"),
    ]
    started = [(argv, what, ringcast_cmd(*argv, "--url", broker.url)) for argv, what in cases]
    procs.extend(p for _, _, p in started)
    for argv, what, p in started:
        status, line, _ = one_line_error(p)
        assert status == 1 and line.startswith(f"ringcast {argv[0]}: error: ") \
            and what in line, (argv, line)


def test_a_broker_that_cannot_listen_says_so_in_one_line(broker, tmp_path):
    cases = []
    if zmq.has("ipc"):
        cases.append(("ipc://%s/no/such/dir.sock" % tmp_path, "No such file or directory"))
    if broker.url.startswith("tcp://"):
        cases.append((broker.url, "Address already in use"))
    for url, what in cases:
        status, line, out = one_line_error(ringcast_cmd("broker", "--bind", url))
        assert status == 1 and line.startswith("ringcast broker: error: ") \
            and what in line and not out, line


def python_cli(*args):
    """``ringcast ARGS`` in a child whose SIGINT raises KeyboardInterrupt even
    where this test run was started with SIGINT ignored (a background job)."""
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from ringcast.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)




@needs_sigint
def test_sub_stops_cleanly_on_sigint(broker, procs):
    sub = python_cli("sub", "x.>", "--url", broker.url)
    procs.append(sub)
    assert sub.stderr.readline().startswith("subscribed to x.>")
    sub.send_signal(signal.SIGINT)
    out, err = sub.communicate(timeout=20)
    assert (sub.returncode, out, err) == (0, "", "")


@needs_sigint
def test_sigint_while_waiting_for_a_broker_is_no_traceback(procs):
    """Ctrl-C before any broker answered: status 130, nothing on stderr."""
    sub = python_cli("sub", "x.>", "--url", dead_tcp_url(), "--timeout", "60")
    procs.append(sub)
    assert wait_for_threads(sub.pid, 2), "the client did not start"
    sub.send_signal(signal.SIGINT)
    out, err = sub.communicate(timeout=20)
    assert (sub.returncode, out, err) == (130, "", "")


def wait_for_threads(pid, n, timeout=20):
    """The process runs ``n`` threads (its client's I/O thread is up)."""
    import psutil

    from .conftest import wait_for
    return wait_for(lambda: psutil.Process(pid).num_threads() >= n, timeout)


@pytest.mark.parametrize("command", [None, "broker", "pub", "sub", "req", "stats", "demo",
                                     "bench"])
def test_help_of_every_command(command):
    argv = ("--help",) if command is None else (command, "--help")
    out = subprocess.run([sys.executable, "-m", "ringcast", *argv], capture_output=True,
                         text=True, env=ENV, timeout=30)
    prog = "ringcast" if command is None else f"ringcast {command}"
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {prog} "), out
    assert not out.stderr
