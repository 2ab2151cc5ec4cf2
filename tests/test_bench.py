"""``ringcast bench``: every scenario completes a tiny run and its JSON matches
the documented schema. No speed assertions: these runs are far too short."""

from __future__ import annotations

import importlib.util
import io
import json
import statistics

import pytest

from ringcast import bench

EMBEDDED = ["embedded-pubsub", "embedded-fanout", "embedded-queue"]
HAVE_BLINKER = importlib.util.find_spec("blinker") is not None


def _run(tmp_path, *args):
    out = tmp_path / "bench.json"
    rc = bench.main([*args, "--json", str(out)])
    doc = json.loads(out.read_text())
    bench.validate(doc)
    return rc, doc


def _check_rows(doc, scenario, subscribers, baselines):
    rows = [r for r in doc["results"] if r["scenario"] == scenario]
    systems = [r["system"] for r in rows]
    assert systems[0] == "ringcast"
    for system in baselines:
        assert system in systems
    for row in rows:
        assert row["subscribers"] == subscribers
        assert row["size"] == 16
        assert row["msgs_per_s"] > 0 and row["deliveries_per_s"] > 0
        assert row["p50_us"] is None and row["p99_us"] is None
        assert row["lost"] == 0
    ours = rows[0]
    fanout = subscribers if scenario != "embedded-queue" else 1
    assert ours["deliveries_per_s"] == pytest.approx(ours["msgs_per_s"] * fanout)


@pytest.mark.parametrize("scenario", EMBEDDED)
def test_scenario_by_count(tmp_path, capsys, scenario):
    rc, doc = _run(tmp_path, scenario, "--count", "3000", "--batch", "700")
    assert rc == 0
    subs = 4 if scenario == "embedded-fanout" else 1
    if scenario == "embedded-queue":
        baselines = ["queue.Queue", "collections.deque"]
    else:
        baselines = ["blinker"] if HAVE_BLINKER else []
    _check_rows(doc, scenario, subs, baselines)
    out, err = capsys.readouterr()
    assert scenario in out and "ringcast" in out
    assert "\r" not in err  # no progress line when stderr is not a terminal


def test_embedded_group_by_duration_with_options(tmp_path):
    rc, doc = _run(tmp_path, "embedded", "--duration", "0.05", "--subscribers", "3",
                   "--size", "16", "--publish", "many", "--recv", "payloads")
    assert rc == 0
    assert [r["scenario"] for r in doc["results"] if r["system"] == "ringcast"] == EMBEDDED
    for scenario in EMBEDDED:
        _check_rows(doc, scenario, 3, [])
    machine = doc["machine"]
    assert machine["cores"] >= 1 and machine["python"] and "argv" in machine


def test_queue_with_competing_consumers(tmp_path):
    rc, doc = _run(tmp_path, "embedded-queue", "--count", "1000", "--subscribers", "4",
                   "--batch", "10")
    assert rc == 0
    _check_rows(doc, "embedded-queue", 4, ["queue.Queue"])


def test_schema_is_exact():
    row = bench.Result("s", "ringcast", 16, 1, 1.0, 1.0).as_json()
    bench.validate({"machine": {}, "results": [row]})
    with pytest.raises(ValueError):
        bench.validate({"machine": {}, "results": [dict(row, extra=1)]})
    with pytest.raises(ValueError):
        bench.validate({"machine": {}, "results": [dict(row, lost=0.5)]})
    with pytest.raises(ValueError):
        bench.validate({"machine": {}, "results": [dict(row, p50_us="1")]})
    with pytest.raises(ValueError):
        bench.validate({"machine": {}, "results": [], "more": 1})
    assert set(row) == {"scenario", "system", "size", "subscribers", "msgs_per_s",
                        "deliveries_per_s", "p50_us", "p99_us", "lost"}


def test_progress_line_only_when_enabled():
    stream = io.StringIO()
    quiet = bench.Progress(stream)  # StringIO is not a terminal
    quiet.update("x", 1.0, 10, 10.0, force=True)
    assert stream.getvalue() == ""
    live = bench.Progress(stream, enabled=True)
    live.update("embedded-pubsub ringcast", 1.0, 1000, 2.5e6, force=True)
    live.clear()
    text = stream.getvalue()
    assert "\r" in text and "2.500 M/s" in text and "embedded-pubsub" in text


def test_bad_arguments(capsys):
    assert bench.main(["no-such-scenario", "--count", "10"]) == 2
    assert bench.main(["embedded-pubsub", "--size", "0"]) == 2
    assert bench.main(["embedded-pubsub", "--subscribers", "0"]) == 2
    assert bench.main(["reqrep", "--rounds", "-1"]) == 2
    assert "unknown scenario" in capsys.readouterr().err
    assert bench.main(["--list"]) == 0
    assert "embedded-fanout" in capsys.readouterr().out


def test_ringcast_bench_subcommand(tmp_path):
    cli = pytest.importorskip("ringcast.cli")
    out = tmp_path / "cli.json"
    rc = cli.main(["bench", "embedded-pubsub", "--count", "500", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    bench.validate(doc)
    assert doc["results"][0]["system"] == "ringcast"


# -- broker scenarios: separate processes over loopback TCP ---------------------------------
BROKER = [("pubsub", 1, ["pyzmq PUB/SUB", "zmq.proxy XSUB/XPUB"], ()),
          ("pubsub", 1, ["pyzmq PUB/SUB", "zmq.proxy XSUB/XPUB"], ("--recv", "payloads")),
          ("fanout", 2, ["pyzmq PUB/SUB", "zmq.proxy XSUB/XPUB"], ()),
          ("queue", 2, ["pyzmq PUSH/PULL"], ())]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario,subs,baselines,extra", BROKER)
def test_broker_stream_scenarios(tmp_path, scenario, subs, baselines, extra):
    pytest.importorskip("zmq")
    rc, doc = _run(tmp_path, scenario, "--count", "2000", "--batch", "500",
                   "--subscribers", str(subs), "--no-external", *extra)
    assert rc == 0
    rows = doc["results"]
    assert [r["system"] for r in rows] == ["ringcast", *baselines]
    for row in rows:
        assert row["scenario"] == scenario and row["subscribers"] == subs
        assert row["lost"] == 0, row
        assert row["msgs_per_s"] > 0 and row["p50_us"] is None
    fanout = 1 if scenario == "queue" else subs
    assert rows[0]["deliveries_per_s"] == pytest.approx(rows[0]["msgs_per_s"] * fanout)


REQREP_SYSTEMS = ["ringcast", "ringcast --spin-us 0", "ringcast --spin-us 1000",
                  "pyzmq REQ/REP", "zmq.proxy ROUTER/DEALER"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario,baselines,extra", [
    ("reqrep", REQREP_SYSTEMS[1:], ()),
    ("reqrep", REQREP_SYSTEMS[1:], ("--rounds", "0")),   # one system after another
    ("reqrep-pipelined", ["pyzmq DEALER/ROUTER", "zmq.proxy ROUTER/DEALER"], ()),
])
def test_broker_reqrep_reports_latency(tmp_path, scenario, baselines, extra):
    pytest.importorskip("zmq")
    rc, doc = _run(tmp_path, scenario, "--count", "300", "--inflight", "8", "--no-external",
                   *extra)
    assert rc == 0
    rows = doc["results"]
    ours = ["ringcast"]
    if scenario == "reqrep-pipelined" and importlib.util.find_spec("uvloop") is not None:
        ours.append("ringcast (uvloop)")   # the same requester on uvloop's event loop
    assert [r["system"] for r in rows] == [*ours, *baselines]
    for row in rows:
        assert 0 < row["p50_us"] <= row["p99_us"]
        assert row["lost"] == 0 and row["msgs_per_s"] > 0


@pytest.mark.timeout(180)
def test_reqrep_interleaved_rounds(tmp_path, monkeypatch, capsys):
    """Every system runs one block per round, one at a time, each round starting
    one system later; rows report the medians over rounds of the per-round p50
    and p99, and the ratios under the baselines are medians of per-round ratios."""
    pytest.importorskip("zmq")
    seen = {}
    real_rows = bench._rounds_rows

    def spy(name, opts, blocks, baselines):
        seen["blocks"] = blocks
        return real_rows(name, opts, blocks, baselines)

    monkeypatch.setattr(bench, "_rounds_rows", spy)
    rc, doc = _run(tmp_path, "reqrep", "--count", "60", "--rounds", "3", "--no-external")
    assert rc == 0
    rows = {r["system"]: r for r in doc["results"]}
    assert list(rows) == REQREP_SYSTEMS
    blocks = seen["blocks"]
    assert list(blocks) == REQREP_SYSTEMS
    for system, bs in blocks.items():
        assert [b["n"] for b in bs] == [20, 20, 20]   # --count split over the rounds
        row = rows[system]
        assert 0 < row["p50_us"] <= row["p99_us"] and row["msgs_per_s"] > 0
        assert row["p50_us"] == pytest.approx(statistics.median(b["p50"] for b in bs))
        assert row["p99_us"] == pytest.approx(statistics.median(b["p99"] for b in bs))
    # the blocks ran one at a time, round after round, the order rotating
    previous_end = 0.0
    for i in range(3):
        by_start = sorted(REQREP_SYSTEMS, key=lambda s: blocks[s][i]["started"])
        assert by_start == bench._rotated(REQREP_SYSTEMS, bench.WARMUP_ROUNDS + i)
        spans = [(blocks[s][i]["started"], blocks[s][i]["started"] + blocks[s][i]["elapsed"])
                 for s in by_start]
        for (start, _), (_, end_before) in zip(spans, [(0.0, previous_end)] + spans):
            assert start > end_before
        previous_end = spans[-1][1]
    assert bench._rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    out = capsys.readouterr().out
    for base in ("pyzmq REQ/REP", "zmq.proxy ROUTER/DEALER"):
        (note,) = [line for line in out.splitlines() if line.startswith(f"reqrep / {base}:")]
        assert note.startswith(f"reqrep / {base}: 3 rounds of 20 round trips; p50 by round ")
        for ours in REQREP_SYSTEMS[:3]:
            ratios = [a["p50"] / b["p50"] for a, b in zip(blocks[ours], blocks[base])]
            assert f"{ours} {statistics.median(ratios):.2f}x " in note


def test_interleaved_ratios_pair_systems_within_rounds():
    """The ratio is the median of the per-round ratios, not the ratio of the
    medians: a slow round slows both systems measured in it."""
    def blocks(*p50s):
        return [{"n": 10, "elapsed": 0.01, "p50": p, "p99": 2 * p} for p in p50s]

    rows = bench._rounds_rows("reqrep", bench.Options(), {
        "ringcast": blocks(200.0, 300.0, 400.0),
        "pyzmq REQ/REP": blocks(100.0, 100.0, 400.0)}, ["pyzmq REQ/REP"])
    ours, base = rows
    assert (ours.p50_us, ours.p99_us, base.p50_us) == (300.0, 600.0, 100.0)  # 3x apart
    assert ours.msgs_per_s == pytest.approx(1000.0)
    assert ours.note == ("3 rounds of 10 round trips; p50 by round 200.0-400.0 us, "
                         "p99 400.0-800.0 us")
    assert base.note.endswith("p50 ratio to this within each round, median (range): "
                              "ringcast 2.00x (1.00-3.00)")


def test_processes_clean_up_on_error():
    """A failing child surfaces as an error in the parent, and no child outlives
    the ``processes`` block."""
    with pytest.raises(RuntimeError, match="boom"):
        with bench.processes(("bad", bench._selftest_child, ("boom",))):
            pass  # pragma: no cover - never reached: wait_ready raises
    with bench.processes(("ok", bench._selftest_child, (None,))) as (p,):
        p.go()
        assert p.result(30) == "done"
    assert not p.process.is_alive()


@pytest.mark.timeout(180)
def test_broker_slow_consumer(tmp_path, capsys):
    pytest.importorskip("zmq")
    rc, doc = _run(tmp_path, "slow-consumer", "--count", "30000", "--batch", "1000")
    assert rc == 0  # losses are the chosen drop_oldest policy's, not a failure
    rows = doc["results"]
    assert [r["system"] for r in rows] == ["ringcast", "zmq.proxy XSUB/XPUB"]
    ours = rows[0]
    assert ours["subscribers"] == 2 and ours["msgs_per_s"] > 0
    out = capsys.readouterr().out
    assert "broker RSS MB" in out and "drops counted by the broker" in out
    counted = int(out.split("drops counted by the broker ")[1].split(",")[0])
    assert ours["lost"] == counted  # every loss is a counted drop of the stalled subscriber


def test_a_failing_scenario_does_not_cost_the_others(tmp_path, monkeypatch, capsys):
    def broken(name, opts, progress):
        raise RuntimeError("boom")

    monkeypatch.setitem(bench.SCENARIOS, "broken",
                        bench.Scenario("broken", broken, "always fails"))
    rc, doc = _run(tmp_path, "broken", "embedded-pubsub", "--count", "500")
    assert rc == 1
    assert [r["scenario"] for r in doc["results"]][0] == "embedded-pubsub"
    assert "scenario broken failed: RuntimeError: boom" in capsys.readouterr().err


# -- optional external baselines: redis-server + redis-py, nats-server + nats-py --------------
# They run only where both the server and the client library are installed (CI's
# fresh machine has neither: these tests skip there, naming what is missing).
EXTERNAL = [(bench.NATS, "nats-py"), (bench.REDIS, "redis-py pub/sub")]


@pytest.mark.timeout(60)
def test_external_pubsub_baselines(tmp_path, capsys):
    pytest.importorskip("zmq")
    present = [(ext, system) for ext, system in EXTERNAL if not bench._external_missing(ext)]
    if not present:
        pytest.skip("; ".join(f"{ext.label}: {bench._external_missing(ext)}"
                              for ext, _ in EXTERNAL))
    rc, doc = _run(tmp_path, "pubsub", "--count", "2000", "--batch", "500",
                   "--subscribers", "2")
    assert rc == 0
    rows = {r["system"]: r for r in doc["results"]}
    err = capsys.readouterr().err
    for ext, system in EXTERNAL:
        if (ext, system) in present:
            row = rows[system]
            assert row["scenario"] == "pubsub" and row["subscribers"] == 2
            assert row["msgs_per_s"] > 0 and row["lost"] == 0, row
            assert row["deliveries_per_s"] == pytest.approx(row["msgs_per_s"] * 2)
            assert doc["machine"][ext.server]  # the server's version is recorded
        else:
            assert system not in rows
            assert f"pubsub: skipping {ext.label}: " in err


@pytest.mark.timeout(60)
def test_nats_request_reply_latency():
    missing = bench._external_missing(bench.NATS)
    if missing:
        pytest.skip(f"{bench.NATS.label}: {missing}")
    (row,) = bench._nats_reqrep_rows("reqrep", bench.Options(count=200),
                                     bench.Progress(enabled=False))
    assert row.system == "nats-py request/reply"
    assert 0 < row.p50_us <= row.p99_us and row.msgs_per_s > 0 and row.lost == 0


def test_missing_server_is_skipped_with_a_message_and_no_row(tmp_path, monkeypatch, capsys):
    """No server binary on PATH (nor in the sbin directories): one clear line each,
    saying what to install, and no row; no server or child process is started."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(bench, "_SBIN_DIRS", ())
    opts = bench.Options(count=100)
    assert bench._external_rows("pubsub", opts, bench.Progress(enabled=False), 1) == []
    assert bench._nats_reqrep_rows("reqrep", opts, bench.Progress(enabled=False)) == []
    err = capsys.readouterr().err
    assert ("pubsub: skipping redis-server + redis-py: redis-server is not on PATH "
            "(apt-get install redis-server)") in err
    assert ("pubsub: skipping nats-server + nats-py: nats-server is not on PATH "
            "(apt-get install nats-server)") in err
    assert "reqrep: skipping nats-server + nats-py: nats-server is not on PATH" in err
    with pytest.raises(FileNotFoundError):
        with bench.external_server(bench.REDIS):
            pass  # pragma: no cover


def test_missing_client_library_is_skipped(monkeypatch, capsys):
    real = bench._importable
    monkeypatch.setattr(bench, "_importable",
                        lambda module: module not in ("redis", "nats") and real(module))
    rows = bench._external_rows("fanout", bench.Options(count=100),
                                bench.Progress(enabled=False), 2)
    assert rows == []
    err = capsys.readouterr().err
    assert "the redis module is not installed (pip install redis)" in err
    assert "the nats module is not installed (pip install nats-py)" in err


def test_no_external_flag(tmp_path, capsys):
    opts = bench.Options(count=100, external=False)
    assert bench._external_rows("pubsub", opts, bench.Progress(enabled=False), 1) == []
    assert "skipping redis-server + redis-py: --no-external" in capsys.readouterr().err


def test_table_compares_baselines_with_ringcast_and_not_its_variants():
    rows = [bench.Result("reqrep", "ringcast", 16, 1, 2000.0, 2000.0),
            bench.Result("reqrep", "ringcast --spin-us 1000", 16, 1, 3000.0, 3000.0),
            bench.Result("reqrep", "pyzmq REQ/REP", 16, 1, 8000.0, 8000.0)]
    last = [line.split()[-1] for line in bench.render_table(rows).splitlines()[2:]]
    # the last column is "lost" (0) where there is no ratio
    assert last == ["0", "0", "0.2"]   # ringcast, its variant: none; baseline 2000/8000
