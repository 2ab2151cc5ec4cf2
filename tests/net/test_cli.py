"""The command line against a real broker: pub, sub, req, and a clean stop."""

import platform
import signal
import subprocess
import sys

import pytest

from ringcast import Router
from ringcast.broker import Broker
from ringcast.client import connect

from .conftest import ENV, HEARTBEAT, barrier, run_script

pytestmark = pytest.mark.timeout(60)


def ringcast_cmd(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ringcast", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


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
