"""``ringcast bench``: ringcast and its alternatives side by side, in one run.

Every scenario measures ringcast *and* its baselines in the same process
run, on the same payloads, and returns one :class:`Result` row per system;
``--json FILE`` writes them with the machine they ran on::

    {"machine": {...},
     "results": [{"scenario": str, "system": str, "size": int, "subscribers": int,
                  "msgs_per_s": float, "deliveries_per_s": float,
                  "p50_us": float | null, "p99_us": float | null, "lost": int}]}

``msgs_per_s`` counts messages *received* (per subscriber, for fan-out),
``deliveries_per_s`` every copy received by every subscriber, ``lost`` is
deliveries owed minus deliveries received. ``system`` is ``"ringcast"`` for
our rows (``"ringcast <option>"`` for a variant, such as a spinning broker).

Adding a scenario is one function decorated with :func:`scenario`; it gets
the :class:`Options` and a :class:`Progress` and returns its rows. Scenarios
that need other processes (a broker, subscribers, workers) start them with
:func:`processes`, which owns start-up hand-shake, result collection and
shut-down, so every scenario cleans up the same way.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import platform
import queue as queue_mod
import socket
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, TextIO, Tuple

__all__ = [
    "Result",
    "Options",
    "Progress",
    "Scenario",
    "SCENARIOS",
    "scenario",
    "machine_info",
    "run_scenarios",
    "render_table",
    "to_json",
    "validate",
    "processes",
    "free_tcp_endpoint",
    "add_arguments",
    "run",
    "main",
]

SUBJECT = "bench.data"

# -- results ------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One row of the comparison: one system in one scenario."""

    scenario: str
    system: str
    size: int
    subscribers: int
    msgs_per_s: float
    deliveries_per_s: float
    p50_us: Optional[float] = None
    p99_us: Optional[float] = None
    lost: int = 0
    #: free text printed under the table (RSS over time, drop counters); not in the JSON
    note: str = dataclasses.field(default="", compare=False)

    def as_json(self) -> Dict[str, Any]:
        row = dataclasses.asdict(self)
        del row["note"]
        return row


#: the JSON schema of one result row, field -> accepted types (documented in
#: docs/benchmarks.md; tests/test_bench.py validates output against it)
RESULT_SCHEMA: Dict[str, Tuple[type, ...]] = {
    "scenario": (str,),
    "system": (str,),
    "size": (int,),
    "subscribers": (int,),
    "msgs_per_s": (float, int),
    "deliveries_per_s": (float, int),
    "p50_us": (float, int, type(None)),
    "p99_us": (float, int, type(None)),
    "lost": (int,),
}


def validate(doc: Any) -> None:
    """Raise ValueError unless ``doc`` matches the documented JSON schema exactly."""
    if not isinstance(doc, dict) or set(doc) != {"machine", "results"}:
        raise ValueError("top level must be an object with exactly 'machine' and 'results'")
    if not isinstance(doc["machine"], dict):
        raise ValueError("'machine' must be an object")
    if not isinstance(doc["results"], list):
        raise ValueError("'results' must be a list")
    for i, row in enumerate(doc["results"]):
        if not isinstance(row, dict) or set(row) != set(RESULT_SCHEMA):
            raise ValueError(f"results[{i}] must have exactly the keys {sorted(RESULT_SCHEMA)}")
        for key, types in RESULT_SCHEMA.items():
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise ValueError(f"results[{i}].{key} = {value!r} is not {types}")


def machine_info(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Where the numbers came from: CPU, cores, Python, versions, the command."""
    from ._impl import USE_EXTENSIONS
    from ._version import __version__

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info: Dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "ringcast": __version__,
        "ringcast_core": "compiled" if USE_EXTENSIONS else "pure-python",
        "ringcast_path": os.path.dirname(os.path.abspath(__file__)),
    }
    for dist in ("pyzmq", "blinker", "redis", "nats-py"):
        info[dist] = _dist_version(dist)
    for ext in (REDIS, NATS):
        info[ext.server] = _server_version(ext.server)
    if argv is not None:
        info["argv"] = list(argv)
    return info


def _server_version(server: str) -> Optional[str]:
    """``redis-server --version`` / ``nats-server --version``, None when absent."""
    import subprocess

    path = _server_path(server)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=5,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace").strip() or None


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def to_json(results: Sequence[Result], machine: Dict[str, Any]) -> Dict[str, Any]:
    return {"machine": machine, "results": [r.as_json() for r in results]}


# -- options, progress, measurement --------------------------------------------------------


@dataclasses.dataclass
class Options:
    size: int = 16
    subscribers: Optional[int] = None  # None: the scenario's default
    duration: float = 2.0              # seconds per system, unless count is set
    count: Optional[int] = None        # messages per system (overrides duration)
    batch: int = 1000                  # messages per publish/receive cycle
    publish: str = "call"              # "call": publish() per message; "many": publish_many
    inflight: int = 100                # requests outstanding in reqrep-pipelined
    rounds: int = 10                   # reqrep: interleaved rounds (0: one system after another)
    recv: str = "messages"             # "messages": recv_many; "payloads": recv_payloads
    external: bool = True              # redis / nats baselines, where installed

    def payload(self) -> bytes:
        return b"x" * self.size


class Progress:
    """A live ``\\r`` status line on a terminal; silent when ``stream`` is not one."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None,
                 interval: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.interval = interval
        self._last = 0.0
        self._width = 0

    def update(self, label: str, elapsed: float, done: Optional[int] = None,
               rate: Optional[float] = None, force: bool = False) -> None:
        """Redraw the line; without ``done``/``rate`` (other processes are doing
        the counting) it shows the elapsed time only."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = f"{label}: {elapsed:6.1f} s"
        if done is not None and rate is not None:
            line += f"  {done:>12,d} msgs  {rate / 1e6:8.3f} M/s"
        else:
            line += "  running in other processes..."
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


@dataclasses.dataclass
class Tally:
    sent: int = 0       # messages published / sent
    received: int = 0   # deliveries received, all subscribers together
    elapsed: float = 0.0


def drive(step: Callable[[int], int], opts: Options, progress: Progress, label: str) -> Tally:
    """Call ``step(n)`` (publish ``n`` messages, take what arrived, return how
    many deliveries were taken) until ``opts.count`` messages were sent or
    ``opts.duration`` seconds passed. One untimed warm-up step first."""
    step(min(opts.batch, 100))
    tally = Tally()
    clock = time.perf_counter
    t0 = clock()
    now = t0
    while True:
        n = opts.batch
        if opts.count is not None:
            n = min(n, opts.count - tally.sent)
            if n <= 0:
                break
        tally.received += step(n)
        tally.sent += n
        now = clock()
        if opts.count is None and now - t0 >= opts.duration:
            break
        if progress.enabled:
            el = now - t0
            progress.update(label, el, tally.received, tally.received / el if el else 0.0)
    tally.elapsed = max(now - t0, 1e-9)
    progress.clear()
    return tally


def _row(name: str, system: str, opts: Options, subscribers: int, tally: Tally,
         fanout: bool = True) -> Result:
    """A Result from a tally: with ``fanout`` every subscriber is owed every message."""
    owed = tally.sent * (subscribers if fanout else 1)
    per_sub = subscribers if fanout else 1
    return Result(
        scenario=name,
        system=system,
        size=opts.size,
        subscribers=subscribers,
        msgs_per_s=tally.received / per_sub / tally.elapsed,
        deliveries_per_s=tally.received / tally.elapsed,
        lost=owed - tally.received,
    )


def percentiles_us(samples_s: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """p50 and p99 in microseconds of latency samples in seconds (for scenarios
    that measure latency; None, None when there are none)."""
    if not samples_s:
        return None, None
    if len(samples_s) == 1:
        v = samples_s[0] * 1e6
        return v, v
    qs = statistics.quantiles(samples_s, n=100, method="inclusive")
    return statistics.median(samples_s) * 1e6, qs[98] * 1e6


# -- the registry ---------------------------------------------------------------------------

ScenarioFn = Callable[[str, Options, Progress], List[Result]]
#: one process of a scenario: (name, module-level target, its arguments)
Spec = Tuple[str, Callable[..., Any], Tuple[Any, ...]]


@dataclasses.dataclass
class Scenario:
    name: str
    fn: ScenarioFn
    help: str
    default_subscribers: int = 1
    group: str = "embedded"   # "embedded" scenarios run in this process; others spawn
    drop_policy: bool = False  # ringcast runs with a drop policy: its rows may lose

    def run(self, opts: Options, progress: Progress) -> List[Result]:
        return self.fn(self.name, opts, progress)


#: name -> Scenario, in registration order (the order ``all`` runs them in)
SCENARIOS: Dict[str, Scenario] = {}


def scenario(name: str, help: str, default_subscribers: int = 1, group: str = "embedded",
             drop_policy: bool = False) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register ``fn(name, opts, progress) -> [Result, ...]`` as a scenario."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = Scenario(name, fn, help, default_subscribers, group, drop_policy)
        return fn

    return register


def _subscribers(opts: Options, sc_default: int) -> int:
    n = sc_default if opts.subscribers is None else opts.subscribers
    if n < 1:
        raise ValueError("--subscribers must be at least 1")
    return n


# -- embedded scenarios -------------------------------------------------------------------------
# Publisher and subscribers share one thread, as blinker's sender and receivers
# do: each cycle publishes ``batch`` messages, then every subscriber takes
# what arrived. Rings are sized to hold a whole cycle, so nothing waits.


def _ringcast_pubsub(name: str, opts: Options, progress: Progress, nsubs: int) -> Result:
    from .router import Router

    payload = opts.payload()
    items = [payload] * opts.batch
    with Router() as router:
        subs = [router.subscribe(SUBJECT, capacity=max(opts.batch, 8192)) for _ in range(nsubs)]
        takers = [s.recv_payloads if opts.recv == "payloads" else s.recv_many for s in subs]
        publish, publish_many = router.publish, router.publish_many

        def step(n: int) -> int:
            if opts.publish == "many":
                publish_many(SUBJECT, items if n == len(items) else items[:n])
            else:
                for _ in range(n):
                    publish(SUBJECT, payload)
            got = 0
            for take in takers:
                got += len(take(n))
            return got

        tally = drive(step, opts, progress, f"{name} ringcast")
    return _row(name, "ringcast", opts, nsubs, tally)


def _blinker_pubsub(name: str, opts: Options, progress: Progress, nsubs: int) -> Result:
    from blinker import Signal

    payload = opts.payload()
    sig = Signal()
    got: List[Any] = []
    for _ in range(nsubs):
        def on_message(sender: Any, payload: Any, _keep: Callable[[Any], None] = got.append
                       ) -> None:
            _keep(payload)

        sig.connect(on_message, weak=False)
    send = sig.send

    def step(n: int) -> int:
        for _ in range(n):
            send(SUBJECT, payload=payload)
        k = len(got)
        got.clear()
        return k

    tally = drive(step, opts, progress, f"{name} blinker")
    return _row(name, "blinker", opts, nsubs, tally)


def _pubsub_rows(name: str, opts: Options, progress: Progress, default_subs: int
                 ) -> List[Result]:
    nsubs = _subscribers(opts, default_subs)
    rows = [_ringcast_pubsub(name, opts, progress, nsubs)]
    if _importable("blinker"):
        rows.append(_blinker_pubsub(name, opts, progress, nsubs))
    else:
        _skip(name, "blinker", "not installed (pip install blinker)")
    return rows


@scenario("embedded-pubsub", "in-process publish -> 1 subscriber; baseline blinker")
def embedded_pubsub(name: str, opts: Options, progress: Progress) -> List[Result]:
    return _pubsub_rows(name, opts, progress, 1)


@scenario("embedded-fanout", "in-process publish -> N subscribers (default 4); baseline blinker",
          default_subscribers=4)
def embedded_fanout(name: str, opts: Options, progress: Progress) -> List[Result]:
    return _pubsub_rows(name, opts, progress, 4)


@scenario("embedded-queue",
          "in-process work queue: send, receive and ack (N competing consumers); "
          "baselines queue.Queue and collections.deque")
def embedded_queue(name: str, opts: Options, progress: Progress) -> List[Result]:
    from .router import Router

    nsubs = _subscribers(opts, 1)
    payload = opts.payload()
    rows = []
    with Router() as router:
        router.declare_queue("bench", capacity=max(opts.batch, 8192))
        consumers = [router.consume("bench") for _ in range(nsubs)]
        send = router.send
        share = max(1, -(-opts.batch // nsubs))

        def step(n: int) -> int:
            for _ in range(n):
                send("bench", payload)
            got = 0
            while got < n:
                before = got
                for c in consumers:
                    msgs = c.recv_many(share)
                    ack = c.ack
                    for m in msgs:
                        ack(m)
                    got += len(msgs)
                if got == before:
                    break  # nothing more to take: counted as lost
            return got

        tally = drive(step, opts, progress, f"{name} ringcast")
    rows.append(_row(name, "ringcast", opts, nsubs, tally, fanout=False))

    q: "queue_mod.Queue[Any]" = queue_mod.Queue()
    d: "collections.deque[Any]" = collections.deque()
    for system, put, get in (("queue.Queue", q.put, q.get_nowait),
                             ("collections.deque", d.append, d.popleft)):
        rows.append(_row(name, system, opts, nsubs,
                         drive(fifo_step(put, get, payload), opts, progress,
                               f"{name} {system}"), fanout=False))
    return rows


def fifo_step(put: Callable[[Any], Any], get: Callable[[], Any],
               payload: bytes) -> Callable[[int], int]:
    """A baseline round: n puts, then n gets, on a stdlib FIFO (also the
    pytest-benchmark and callgrind rounds of benchmarks/rounds.py)."""
    def step(n: int) -> int:
        for _ in range(n):
            put(payload)
        for _ in range(n):
            get()
        return n
    return step


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _skip(scenario_name: str, system: str, why: str) -> None:
    print(f"{scenario_name}: skipping {system}: {why}", file=sys.stderr)


# -- processes (for scenarios with a broker, remote publishers/subscribers) ---------------------


def rss_bytes() -> int:
    """Resident set size of this process in bytes (0 where unknown)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:
            return 0


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A ``tcp://host:port`` with a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def _child_main(conn: Any, target: Callable[..., Any], args: Tuple[Any, ...]) -> None:
    """Runs in the child: ``target(ctl, *args)``; its return value (or error) goes
    back to the parent. ``ctl`` has ``ready()`` and ``wait_go(timeout)``."""
    ctl = _ChildControl(conn)
    try:
        result = target(ctl, *args)
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        if not ctl.sent_result:
            conn.send(("result", result))
    finally:
        conn.close()


class _ChildControl:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.sent_result = False

    def ready(self, info: Any = None) -> None:
        """Tell the parent this process is set up (connected, subscribed...)."""
        self._conn.send(("ready", info))

    def wait_go(self, timeout: Optional[float] = 60.0) -> Any:
        """Block until the parent says go (every process is ready); returns
        what it sent: ``"go"``, or ``"stop"`` when the scenario is abandoned."""
        if not self._conn.poll(timeout):
            raise TimeoutError("no 'go' from the bench within the timeout")
        return self._conn.recv()

    def wait_stop(self) -> None:
        """Block until the parent says stop (for servers: brokers, proxies)."""
        while self._conn.recv() != "stop":
            pass

    def wait_stop_sampling(self, interval: float = 0.25) -> List[Tuple[float, int]]:
        """As ``wait_stop``, sampling this process's RSS every ``interval`` s;
        ``"go"`` restarts the clock. Returns [(seconds since go, RSS bytes)]."""
        samples: List[Tuple[float, int]] = []
        t0 = time.monotonic()
        while True:
            if self._conn.poll(interval):
                msg = self._conn.recv()
                if msg == "stop":
                    return samples
                if msg == "go":
                    t0 = time.monotonic()
                    samples = []
            samples.append((round(time.monotonic() - t0, 2), rss_bytes()))

    def answer(self, result: Any) -> None:
        """Report one of several results, e.g. a block of an interleaved round
        (the parent reads each with ``Proc.result()``); the final return value
        is still sent when the target returns."""
        self._conn.send(("result", result))

    def send_result(self, result: Any) -> None:
        """Report the result now, e.g. before lingering until stop (a sender
        that closed its socket at once would discard what is still queued)."""
        self._conn.send(("result", result))
        self.sent_result = True

    def should_stop(self) -> bool:
        """True once the parent asked this process to stop (non-blocking)."""
        return bool(self._conn.poll(0))


class Proc:
    """One child process of a scenario, with a control pipe."""

    def __init__(self, name: str, target: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child, target, args),
                                   name=f"ringcast-bench-{name}", daemon=True)
        self._child_conn = child
        self.ready_info: Any = None

    def start(self) -> None:
        self.process.start()
        self._child_conn.close()

    def _expect(self, kind: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no {kind!r} within {timeout} s")
        what, value = self.conn.recv()
        if what == "error":
            raise RuntimeError(f"{self.name} failed: {value}")
        if what != kind:
            raise RuntimeError(f"{self.name}: expected {kind!r}, got {what!r}")
        return value

    def wait_ready(self, timeout: float = 30.0) -> Any:
        self.ready_info = self._expect("ready", timeout)
        return self.ready_info

    def go(self, message: Any = "go") -> None:
        self.conn.send(message)

    def result(self, timeout: float = 60.0) -> Any:
        return self._expect("result", timeout)

    def finish(self, timeout: float = 30.0) -> Any:
        """Tell a server process to stop and return its result."""
        self.conn.send("stop")
        return self.result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask nicely, then terminate, then kill."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send("stop")
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


@contextlib.contextmanager
def processes(*specs: Spec,
              ready_timeout: float = 30.0) -> Iterator[List[Proc]]:
    """Start one process per ``(name, target, args)``, wait until each has called
    ``ctl.ready()``, yield them, and stop every one of them on the way out
    (even on error). ``target`` must be a module-level function (spawned
    processes import it) and is called as ``target(ctl, *args)``."""
    procs = [Proc(name, target, args) for name, target, args in specs]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(ready_timeout)
        yield procs
    finally:
        for p in procs:
            p.stop()


# -- broker scenarios: every participant in its own process ----------------------------------
# The publisher records when it started sending; each receiver records when it
# took its last message; rates are received / (last - start), so they count
# what arrived, not what was sent. The stream ends with an end marker (subject
# END for ringcast and zmq.proxy, an empty frame for direct pyzmq); a receiver
# that never sees it stops after IDLE seconds without messages (FIRST_WAIT for
# the first one), and whatever never arrived is counted as lost. pyzmq sockets
# get unlimited high-water marks (SNDHWM/RCVHWM 0), so the baselines lose
# nothing either and their rates are comparable; ringcast subscriptions use
# the block policy.

END = "bench.end"
IDLE = 3.0            # seconds without a message before a receiver gives up
FIRST_WAIT = 30.0     # ... and for the first message (a loaded machine starts slowly)
SERVICE = "bench.echo"
SPIN = 0.001          # the reqrep scenario's always-spinning broker spins this long after input
QUEUE = "bench.work"


def _send_stream(opts: Options, send_one: Callable[[], None],
                 send_batch: Optional[Callable[[int], None]] = None) -> Tuple[int, float]:
    """Send until ``opts.count`` or ``opts.duration``; returns (sent, start time)."""
    t0 = time.monotonic()
    sent = 0
    while True:
        n = opts.batch
        if opts.count is not None:
            n = min(n, opts.count - sent)
            if n <= 0:
                break
        if send_batch is not None:
            send_batch(n)
        else:
            for _ in range(n):
                send_one()
        sent += n
        if opts.count is None and time.monotonic() - t0 >= opts.duration:
            break
    return sent, t0


def _broker_child(ctl: "_ChildControl", sample: bool = False,
                  spin: Optional[float] = None) -> Any:
    """A ringcast broker, in a process tuned as ``ringcast broker`` tunes its
    own (``spin`` None: its default); with ``sample``, returns its RSS over
    time on stop."""
    from .broker import Broker
    from .cli import tune_broker_process

    tune_broker_process()
    broker = Broker("tcp://127.0.0.1:0", spin=spin).start()
    try:
        ctl.ready(broker.endpoints[0])
        if sample:
            return ctl.wait_stop_sampling()
        ctl.wait_stop()
        return None
    finally:
        broker.stop()


def _rc_sub_child(ctl: "_ChildControl", url: str, opts: Options) -> Dict[str, Any]:
    """Takes up to ``opts.batch`` deliveries per call, as Messages or as bare
    payloads (``opts.recv``). END is the only message with an empty payload
    (``--size`` is at least 1), so the payloads mode sees it too."""
    from . import errors
    from .client import connect

    payloads = opts.recv == "payloads"
    with connect(url) as c:
        sub = c.subscribe("bench.>", capacity=65536)
        take = sub.recv_payloads if payloads else sub.recv_many
        c.flush()
        ctl.ready()
        if ctl.wait_go() == "stop":
            return {}
        n, t_last, wait = 0, time.monotonic(), FIRST_WAIT
        while True:
            try:
                got: List[Any] = take(opts.batch, timeout=wait)
            except errors.Timeout:
                break
            t_last, wait = time.monotonic(), IDLE
            if (got[-1] if payloads else got[-1].payload) == b"":
                n += len(got) - 1
                break
            n += len(got)
        return {"received": n, "t_last": t_last, "dropped": sub.dropped}


def _rc_pub_child(ctl: "_ChildControl", url: str, opts: Options,
                  report_drops: bool = False) -> Dict[str, Any]:
    from .client import connect

    payload = opts.payload()
    items = [payload] * opts.batch
    with connect(url) as c:
        ctl.ready()
        if ctl.wait_go() == "stop":
            return {}
        publish = c.publish

        def one() -> None:
            publish(SUBJECT, payload)

        def many(n: int) -> None:
            c.publish_many(SUBJECT, items if n == len(items) else items[:n])

        sent, t0 = _send_stream(opts, one, many if opts.publish == "many" else None)
        c.publish(END, b"")
        c.flush(60)
        dropped = c.stats()["dropped"] if report_drops else 0
    return {"sent": sent, "t0": t0, "dropped": dropped}


def _zmq_socket(kind: int, hwm: Optional[int] = 0) -> Any:
    """A socket with high-water marks ``hwm`` (0: unlimited; None: pyzmq's default)."""
    import zmq

    s: Any = zmq.Context.instance().socket(kind)
    s.setsockopt(zmq.LINGER, 2000)
    if hwm is not None:
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
    return s


def _zmq_pub_child(ctl: "_ChildControl", endpoint: str, bind: bool, nsubs: int,
                   multipart: bool, opts: Options, hwm: Optional[int] = 0) -> Any:
    """XPUB (a PUB that sees subscriptions): waits for every subscriber's unique
    ``ready.<i>`` subscription, so no message goes out before all are there."""
    import zmq

    s = _zmq_socket(zmq.XPUB, hwm)
    s.bind(endpoint) if bind else s.connect(endpoint)
    seen: Set[bytes] = set()
    deadline = time.monotonic() + 30
    while len(seen) < nsubs:
        if not s.poll(500):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen)} of {nsubs} subscribers appeared")
            continue
        event = s.recv()
        if event[:1] == b"\x01" and event[1:].startswith(b"ready."):
            seen.add(event[1:])
    ctl.ready()
    if ctl.wait_go() == "stop":
        return {}
    payload = opts.payload()
    topic = SUBJECT.encode()
    if multipart:
        send_multipart = s.send_multipart
        frames = [topic, payload]
        sent, t0 = _send_stream(opts, lambda: send_multipart(frames))
        s.send_multipart([END.encode(), b""])
    else:
        send = s.send
        sent, t0 = _send_stream(opts, lambda: send(payload))
        s.send(b"")
    # keep the socket open until the receivers are done: closing it now would
    # discard whatever is still queued once LINGER runs out
    ctl.send_result({"sent": sent, "t0": t0})
    ctl.wait_stop()
    s.close(0)
    return None


def _zmq_sub_child(ctl: "_ChildControl", endpoint: str, index: int,
                   multipart: bool, hwm: Optional[int] = 0, stalled: bool = False
                   ) -> Dict[str, Any]:
    """A SUB that counts what it receives; ``stalled`` reads nothing until the
    bench says stop, then counts what it can still take without waiting."""
    import zmq

    s = _zmq_socket(zmq.SUB, hwm)
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, b"bench." if multipart else b"")
    s.setsockopt(zmq.SUBSCRIBE, f"ready.{index}".encode())
    ctl.ready()
    if stalled:
        ctl.wait_stop()
        n = 0
        end = END.encode()
        while True:
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames[0] != end and frames[0]:
                n += 1
        s.close(0)
        return {"received": n, "t_last": time.monotonic()}
    if ctl.wait_go() == "stop":
        return {}
    n, t_last = _zmq_count(s, multipart)
    s.close(0)
    return {"received": n, "t_last": t_last, "dropped": 0}


def _zmq_count(s: Any, multipart: bool) -> Tuple[int, float]:
    """Count messages up to the end marker (``[END, b""]`` or an empty frame);
    FIRST_WAIT for the first one, then IDLE between messages. Returns the
    count and the time the last message arrived."""
    import zmq

    s.setsockopt(zmq.RCVTIMEO, int(FIRST_WAIT * 1000))
    end = END.encode()
    n = 0
    try:
        if multipart:
            first = s.recv_multipart()[0] != end
        else:
            first = bool(s.recv())
        s.setsockopt(zmq.RCVTIMEO, int(IDLE * 1000))
        if first:
            n = 1
            if multipart:
                recv_multipart = s.recv_multipart
                while recv_multipart()[0] != end:
                    n += 1
            else:
                recv = s.recv
                while recv():
                    n += 1
        return n, time.monotonic()
    except zmq.Again:
        return n, time.monotonic() - (IDLE if n else FIRST_WAIT)


def _zmq_proxy_child(ctl: "_ChildControl", front_kind: str, back_kind: str,
                     hwm: Optional[int] = 0, sample: bool = False) -> None:
    """``zmq.proxy`` between two bound sockets, until the bench says stop; with
    ``sample``, sends back its RSS over time first."""
    import threading

    import zmq

    front = _zmq_socket(getattr(zmq, front_kind), hwm)
    back = _zmq_socket(getattr(zmq, back_kind), hwm)
    front_ep = free_tcp_endpoint()
    back_ep = free_tcp_endpoint()
    front.bind(front_ep)
    back.bind(back_ep)
    threading.Thread(target=zmq.proxy, args=(front, back), daemon=True).start()
    ctl.ready((front_ep, back_ep))
    if sample:
        ctl.send_result(ctl.wait_stop_sampling())
    else:
        ctl.wait_stop()
    os._exit(0)  # the proxy thread holds the sockets; nothing to clean up


def _stream_row(name: str, system: str, opts: Options, results: Sequence[Dict[str, Any]],
                fanout: bool = True) -> Result:
    """A row from a stream's ``results``: the receivers', then the sender's last
    (the order the stream scenarios list their processes in)."""
    *subs, pub = results
    nsubs = len(subs)
    received = sum(s["received"] for s in subs)
    last = max(s["t_last"] for s in subs)
    elapsed = max(last - pub["t0"], 1e-9)
    owed = pub["sent"] * (nsubs if fanout else 1)
    per_sub = nsubs if fanout else 1
    return Result(scenario=name, system=system, size=opts.size, subscribers=nsubs,
                  msgs_per_s=received / per_sub / elapsed,
                  deliveries_per_s=received / elapsed, lost=owed - received)


def _collect(procs: Sequence[Proc], progress: Progress, label: str, timeout: float
             ) -> List[Any]:
    """Say go to every process and gather their results in order."""
    for p in procs:
        p.go()
    t0 = time.monotonic()
    out = []
    for p in procs:
        while not p.conn.poll(0.2):
            elapsed = time.monotonic() - t0
            if elapsed > timeout:
                raise TimeoutError(f"{label}: {p.name} gave no result within {timeout:.0f} s")
            progress.update(label, elapsed)
        out.append(p.result(0))
    progress.clear()
    return out


def _budget(opts: Options) -> float:
    """Seconds to wait for a scenario's results before giving up: generous
    (a count is budgeted at 500 messages/s, slower than any sync round trip)."""
    return (opts.duration if opts.count is None else opts.count / 500) + 60.0


def _pyzmq_missing(name: str) -> bool:
    """The broker and every pyzmq/zmq.proxy baseline need pyzmq: without it a
    broker scenario has one skip line and no rows."""
    if _importable("zmq"):
        return False
    _skip(name, "all systems", "pyzmq is not installed")
    return True


@contextlib.contextmanager
def _server(name: str, target: Callable[..., Any], *args: Any) -> Iterator[Any]:
    """One server process (a ringcast broker, a zmq.proxy) for one system's run;
    yields what it passed to ``ctl.ready()``: the address(es) clients use."""
    with processes((name, target, args)) as (server,):
        yield server.ready_info


def _measure(label: str, opts: Options, progress: Progress, measured: Sequence[Spec],
             peers: Sequence[Spec] = ()) -> List[Any]:
    """Start ``peers`` (servers that report nothing, e.g. a responder) and then
    the ``measured`` processes; say go to the measured ones and return their
    results in order. Every process is stopped on the way out."""
    with processes(*peers, *measured) as procs:
        return _collect(procs[len(peers):], progress, label, _budget(opts))


def _net_pubsub(name: str, opts: Options, progress: Progress, default_subs: int
                ) -> List[Result]:
    nsubs = _subscribers(opts, default_subs)
    if _pyzmq_missing(name):
        return []
    rows = []
    # ringcast: broker, publisher and each subscriber in its own process
    with _server("broker", _broker_child) as url:
        res = _measure(f"{name} ringcast", opts, progress,
                       [*((f"sub{i}", _rc_sub_child, (url, opts)) for i in range(nsubs)),
                        ("pub", _rc_pub_child, (url, opts))])
    rows.append(_stream_row(name, "ringcast", opts, res))
    # pyzmq direct: PUB -> SUB, one frame per message, no broker
    ep = free_tcp_endpoint()
    res = _measure(f"{name} pyzmq", opts, progress,
                   [*((f"sub{i}", _zmq_sub_child, (ep, i, False)) for i in range(nsubs)),
                    ("pub", _zmq_pub_child, (ep, True, nsubs, False, opts))])
    rows.append(_stream_row(name, "pyzmq PUB/SUB", opts, res))
    # zmq.proxy XSUB/XPUB broker, multipart [topic, payload]
    with _server("proxy", _zmq_proxy_child, "XSUB", "XPUB") as (front, back):
        res = _measure(f"{name} zmq.proxy", opts, progress,
                       [*((f"sub{i}", _zmq_sub_child, (back, i, True)) for i in range(nsubs)),
                        ("pub", _zmq_pub_child, (front, False, nsubs, True, opts))])
    rows.append(_stream_row(name, "zmq.proxy XSUB/XPUB", opts, res))
    rows.extend(_external_rows(name, opts, progress, nsubs))
    return rows


# -- optional external systems: redis-server + redis-py, nats-server + nats-py -------------------
# Each is measured only when both its server binary and its client library are
# on this machine; otherwise the scenario prints one line saying which is
# missing and how to get it, and has no row for it. The bench starts the
# server itself on 127.0.0.1 and a free port, in a temporary directory (no
# persistence), and stops it when the system's run ends, also on errors. Like
# the pyzmq baselines, the servers get unbounded per-subscriber buffers
# (redis: client-output-buffer-limit pubsub 0 0 0; nats: max_pending 1 GiB,
# and the nats-py subscription pending limits 0), so they lose nothing that a
# default limit would have dropped, and their rates are comparable.

#: where Debian puts nats-server (/usr/sbin), which is not on every user's PATH
_SBIN_DIRS: Tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin")
SERVER_START_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class External:
    """An external baseline: its server binary and Python client."""

    label: str      # how skip lines name it
    server: str     # executable
    module: str     # client module to import
    apt: str        # Debian package with the server
    pip: str        # PyPI distribution with the client


REDIS = External("redis-server + redis-py", "redis-server", "redis", "redis-server", "redis")
NATS = External("nats-server + nats-py", "nats-server", "nats", "nats-server", "nats-py")


def _server_path(server: str) -> Optional[str]:
    import shutil

    found = shutil.which(server)
    if found is None and _SBIN_DIRS:
        found = shutil.which(server, path=os.pathsep.join(_SBIN_DIRS))
    return found


def _external_missing(ext: External) -> Optional[str]:
    """None when ``ext`` can run here; else what is missing and how to install it."""
    missing = []
    if _server_path(ext.server) is None:
        missing.append(f"{ext.server} is not on PATH (apt-get install {ext.apt})")
    if not _importable(ext.module):
        missing.append(f"the {ext.module} module is not installed (pip install {ext.pip})")
    return "; ".join(missing) or None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the server process before exec (Linux): SIGTERM it when the bench dies,
    even killed with SIGKILL, when no ``finally`` runs."""
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def external_server(ext: External, timeout: float = SERVER_START_TIMEOUT
                    ) -> Iterator[int]:
    """Start ``ext``'s server on 127.0.0.1 and a free port in a temporary
    directory; yield the port once it accepts connections; stop it (SIGTERM,
    then SIGKILL) on the way out, also on errors. A port taken by someone else
    between choosing and binding it costs a retry, up to 3 tries."""
    import subprocess
    import tempfile

    binary = _server_path(ext.server)
    if binary is None:
        raise FileNotFoundError(f"{ext.server} is not on PATH")
    with tempfile.TemporaryDirectory(prefix="ringcast-bench-") as tmp:
        log_path = os.path.join(tmp, "server.log")
        for attempt in range(3):
            port = _free_port()
            if ext is REDIS:
                argv = [binary, "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", tmp,
                        "--client-output-buffer-limit", "pubsub 0 0 0"]
            else:
                conf = os.path.join(tmp, "nats.conf")
                with open(conf, "w", encoding="ascii") as f:
                    f.write("max_pending: 1073741824\n")
                argv = [binary, "-a", "127.0.0.1", "-p", str(port), "-c", conf]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            try:
                deadline = time.monotonic() + timeout
                up = False
                while proc.poll() is None and time.monotonic() < deadline:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                        s.settimeout(0.5)
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            up = True
                            break
                    time.sleep(0.05)
                if up:
                    yield port
                    return
                if proc.poll() is None:
                    raise TimeoutError(f"{ext.server} did not listen on port {port} "
                                       f"within {timeout:.0f} s")
                if attempt == 2:
                    with open(log_path, "rb") as log:
                        tail = log.read()[-400:].decode("utf-8", "replace").strip()
                    raise RuntimeError(f"{ext.server} exited with {proc.returncode}: {tail}")
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)


def _redis_sub_child(ctl: "_ChildControl", port: int) -> Dict[str, Any]:
    """A redis-py subscriber to SUBJECT and END; ready once both are confirmed."""
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    p = r.pubsub()
    try:
        p.subscribe(SUBJECT, END)
        confirmed = 0
        deadline = time.monotonic() + 30
        while confirmed < 2:
            m = p.get_message(timeout=1.0)
            if m is not None and m["type"] == "subscribe":
                confirmed += 1
            elif time.monotonic() > deadline:
                raise TimeoutError("redis did not confirm the subscriptions")
        ctl.ready()
        if ctl.wait_go() == "stop":
            return {}
        end = END.encode()
        get = p.get_message
        n, t_last, wait = 0, time.monotonic(), FIRST_WAIT
        while True:
            m = get(timeout=wait)
            if m is None:
                break
            if m["type"] != "message":
                continue
            t_last, wait = time.monotonic(), IDLE
            if m["channel"] == end:
                break
            n += 1
        return {"received": n, "t_last": t_last}
    finally:
        p.close()
        r.close()


def _redis_pub_child(ctl: "_ChildControl", port: int, opts: Options) -> Dict[str, Any]:
    """PUBLISH through a non-transactional pipeline of ``opts.batch`` commands
    per round trip (one synchronous PUBLISH per message would measure round
    trips, not pub/sub throughput)."""
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    try:
        r.ping()
        ctl.ready()
        if ctl.wait_go() == "stop":
            return {}
        payload = opts.payload()
        pipe = r.pipeline(transaction=False)
        publish, execute = pipe.publish, pipe.execute

        def batch(n: int) -> None:
            for _ in range(n):
                publish(SUBJECT, payload)
            execute()

        sent, t0 = _send_stream(opts, lambda: batch(1), batch)
        r.publish(END, b"")
        return {"sent": sent, "t0": t0}
    finally:
        r.close()


def _run_async_child(ctl: "_ChildControl", body: Callable[..., Any], *args: Any) -> Any:
    """Run ``body(ctl, go, *args)`` in a fresh event loop; ``await go()`` waits for
    the bench's go/stop in a thread, so the connection keeps being served."""
    import asyncio

    async def main() -> Any:
        loop = asyncio.get_running_loop()

        async def go() -> Any:
            return await loop.run_in_executor(None, ctl.wait_go)

        return await body(ctl, go, *args)

    return asyncio.run(main())


async def _nats_connect(port: int) -> Any:
    import nats

    async def quiet(exc: Exception) -> None:  # slow-consumer etc.: counted as lost
        pass

    return await nats.connect(f"nats://127.0.0.1:{port}", error_cb=quiet,
                              allow_reconnect=False, connect_timeout=10)


async def _nats_sub_body(ctl: "_ChildControl", go: Callable[..., Any], port: int
                         ) -> Dict[str, Any]:
    import asyncio

    nc = await _nats_connect(port)
    try:
        count = [0]
        t_end = [0.0]
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            if msg.subject == END:
                t_end[0] = time.monotonic()
                done.set()
            else:
                count[0] += 1

        # one wildcard subscription: data and end marker share one ordered queue;
        # pending limits 0 = unbounded (like pyzmq's HWM 0)
        await nc.subscribe("bench.>", cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
        await nc.flush(10)
        ctl.ready()
        if await go() == "stop":
            return {}
        seen, t_last = 0, time.monotonic()
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 0.1)
            now = time.monotonic()
            if count[0] != seen:
                seen, t_last = count[0], now
            elif now - t_last > (IDLE if seen else FIRST_WAIT):
                break
        if done.is_set():
            t_last = t_end[0]
        return {"received": count[0], "t_last": t_last}
    finally:
        await nc.close()


def _nats_sub_child(ctl: "_ChildControl", port: int) -> Dict[str, Any]:
    return _run_async_child(ctl, _nats_sub_body, port)  # type: ignore[no-any-return]


async def _nats_pub_body(ctl: "_ChildControl", go: Callable[..., Any], port: int,
                         opts: Options) -> Dict[str, Any]:
    nc = await _nats_connect(port)
    try:
        ctl.ready()
        if await go() == "stop":
            return {}
        payload = opts.payload()
        publish = nc.publish
        t0 = time.monotonic()
        sent = 0
        while True:
            n = opts.batch
            if opts.count is not None:
                n = min(n, opts.count - sent)
                if n <= 0:
                    break
            for _ in range(n):
                await publish(SUBJECT, payload)
            sent += n
            if opts.count is None and time.monotonic() - t0 >= opts.duration:
                break
        await publish(END, b"")
        await nc.flush(60)   # PING/PONG: the server has taken everything
        return {"sent": sent, "t0": t0}
    finally:
        await nc.close()


def _nats_pub_child(ctl: "_ChildControl", port: int, opts: Options) -> Dict[str, Any]:
    return _run_async_child(ctl, _nats_pub_body, port, opts)  # type: ignore[no-any-return]


async def _nats_responder_body(ctl: "_ChildControl", go: Callable[..., Any], port: int
                               ) -> None:
    import asyncio

    nc = await _nats_connect(port)
    try:
        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe(SERVICE, cb=echo)
        await nc.flush(10)
        ctl.ready()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ctl.wait_stop)
    finally:
        await nc.close()


def _nats_responder_child(ctl: "_ChildControl", port: int) -> None:
    _run_async_child(ctl, _nats_responder_body, port)


async def _nats_requester_body(ctl: "_ChildControl", go: Callable[..., Any], port: int,
                               opts: Options) -> Dict[str, Any]:
    nc = await _nats_connect(port)
    try:
        ctl.ready()
        if await go() == "stop":
            return {}
        payload = opts.payload()
        request = nc.request
        for _ in range(50):   # warm-up, as _latency_loop
            await request(SERVICE, payload, timeout=10)
        clock = time.perf_counter
        lat: List[float] = []
        t0 = clock()
        while True:
            t = clock()
            await request(SERVICE, payload, timeout=10)
            now = clock()
            lat.append(now - t)
            if opts.count is not None:
                if len(lat) >= opts.count:
                    break
            elif now - t0 >= opts.duration:
                break
        p50, p99 = percentiles_us(lat)
        return {"n": len(lat), "elapsed": clock() - t0, "p50": p50, "p99": p99}
    finally:
        await nc.close()


def _nats_requester_child(ctl: "_ChildControl", port: int, opts: Options) -> Dict[str, Any]:
    return _run_async_child(ctl, _nats_requester_body, port, opts)  # type: ignore[no-any-return]


def _external_stream_row(name: str, ext: External, system: str, opts: Options, nsubs: int,
                         progress: Progress, sub_child: Callable[..., Any],
                         pub_child: Callable[..., Any]) -> Result:
    with external_server(ext) as port:
        res = _measure(f"{name} {system}", opts, progress,
                       [*((f"sub{i}", sub_child, (port,)) for i in range(nsubs)),
                        ("pub", pub_child, (port, opts))])
    return _stream_row(name, system, opts, res)


def _external_baseline(name: str, ext: External, opts: Options, progress: Progress,
                       measure: Callable[[], Result]) -> List[Result]:
    """``[measure()]`` where this machine has ``ext`` (and --no-external is not
    given); otherwise, or when it fails, a skip line and no row: an external
    baseline never costs the scenario its ringcast rows."""
    missing = _external_missing(ext) if opts.external else "--no-external"
    if missing:
        _skip(name, ext.label, missing)
        return []
    try:
        return [measure()]
    except Exception as exc:
        progress.clear()
        _skip(name, ext.label, f"failed: {type(exc).__name__}: {exc}")
        return []


def _external_rows(name: str, opts: Options, progress: Progress, nsubs: int) -> List[Result]:
    """The redis and nats pub/sub rows that this machine can measure; a skip
    line for each of the others."""
    rows = []
    for ext, system, sub_child, pub_child in (
            (NATS, "nats-py", _nats_sub_child, _nats_pub_child),
            (REDIS, "redis-py pub/sub", _redis_sub_child, _redis_pub_child)):
        rows.extend(_external_baseline(name, ext, opts, progress, functools.partial(
            _external_stream_row, name, ext, system, opts, nsubs, progress,
            sub_child, pub_child)))
    return rows


def _nats_reqrep_rows(name: str, opts: Options, progress: Progress) -> List[Result]:
    def measure() -> Result:
        with external_server(NATS) as port:
            (res,) = _measure(f"{name} nats-py", opts, progress,
                              [("requester", _nats_requester_child, (port, opts))],
                              peers=[("responder", _nats_responder_child, (port,))])
        return _latency_row(name, "nats-py request/reply", opts, res)

    return _external_baseline(name, NATS, opts, progress, measure)


@scenario("pubsub", "1 publisher -> N subscribers through the broker, each its own process; "
          "baselines pyzmq PUB/SUB direct, a zmq.proxy XSUB/XPUB broker, and nats-server "
          "+ nats-py and redis-server + redis-py where installed", group="broker")
def net_pubsub(name: str, opts: Options, progress: Progress) -> List[Result]:
    return _net_pubsub(name, opts, progress, 1)


@scenario("fanout", "as pubsub with N subscribers (default 4), in deliveries/s",
          default_subscribers=4, group="broker")
def net_fanout(name: str, opts: Options, progress: Progress) -> List[Result]:
    return _net_pubsub(name, opts, progress, 4)


def _rc_consumer_child(ctl: "_ChildControl", url: str) -> Dict[str, Any]:
    from . import errors
    from .client import connect

    with connect(url) as c:
        c.declare_queue(QUEUE, capacity=65536)
        consumer = c.consume(QUEUE, prefetch=1024)
        c.flush()
        ctl.ready()
        if ctl.wait_go() == "stop":
            return {}
        n, t_last, wait = 0, time.monotonic(), FIRST_WAIT
        done = False
        while not done:
            try:
                msgs = consumer.recv_many(1024, timeout=wait)
            except errors.Timeout:
                break
            t_last, wait = time.monotonic(), IDLE
            for m in msgs:
                m.ack()
                if not m.payload:  # the end marker (payloads are never empty)
                    done = True
                else:
                    n += 1
        consumer.close()
        c.flush()
        return {"received": n, "t_last": t_last}


def _rc_producer_child(ctl: "_ChildControl", url: str, nconsumers: int, opts: Options
                       ) -> Dict[str, Any]:
    from .client import connect

    payload = opts.payload()
    with connect(url) as c:
        c.declare_queue(QUEUE, capacity=65536)
        ctl.ready()
        if ctl.wait_go() == "stop":
            return {}
        send = c.send
        sent, t0 = _send_stream(opts, lambda: send(QUEUE, payload))
        for _ in range(nconsumers):
            send(QUEUE, b"")
        c.flush(60)
    return {"sent": sent, "t0": t0}


def _zmq_push_child(ctl: "_ChildControl", endpoint: str, nconsumers: int, opts: Options
                    ) -> Any:
    import zmq

    s = _zmq_socket(zmq.PUSH)
    s.bind(endpoint)
    ctl.ready()
    if ctl.wait_go() == "stop":
        return {}
    time.sleep(0.2)  # PUSH cannot see its peers: give every PULL time to connect
    payload = opts.payload()
    send = s.send
    sent, t0 = _send_stream(opts, lambda: send(payload))
    for _ in range(nconsumers):
        send(b"")     # round-robin: one end marker per connected consumer
    ctl.send_result({"sent": sent, "t0": t0})
    ctl.wait_stop()   # as in _zmq_pub_child: do not discard what is still queued
    s.close(0)
    return None


def _zmq_pull_child(ctl: "_ChildControl", endpoint: str) -> Dict[str, Any]:
    import zmq

    s = _zmq_socket(zmq.PULL)
    s.connect(endpoint)
    ctl.ready()
    if ctl.wait_go() == "stop":
        return {}
    n, t_last = _zmq_count(s, False)
    s.close(0)
    return {"received": n, "t_last": t_last}


@scenario("queue", "1 producer -> N competing consumers through the broker, with acks; "
          "baseline pyzmq PUSH/PULL direct (no acks)", group="broker")
def net_queue(name: str, opts: Options, progress: Progress) -> List[Result]:
    n = _subscribers(opts, 1)
    if _pyzmq_missing(name):
        return []
    rows = []
    with _server("broker", _broker_child) as url:
        res = _measure(f"{name} ringcast", opts, progress,
                       [*((f"consumer{i}", _rc_consumer_child, (url,)) for i in range(n)),
                        ("producer", _rc_producer_child, (url, n, opts))])
    rows.append(_stream_row(name, "ringcast", opts, res, fanout=False))
    ep = free_tcp_endpoint()
    res = _measure(f"{name} pyzmq", opts, progress,
                   [*((f"pull{i}", _zmq_pull_child, (ep,)) for i in range(n)),
                    ("push", _zmq_push_child, (ep, n, opts))])
    rows.append(_stream_row(name, "pyzmq PUSH/PULL", opts, res, fanout=False))
    return rows


def _latency_loop(opts: Options, ask: Callable[[], Any]) -> Dict[str, Any]:
    """Synchronous round trips until count/duration; latency of each one."""
    for _ in range(50):   # warm-up: connections, caches
        ask()
    return _latency_block(ask, opts.count, opts.duration)


def _latency_block(ask: Callable[[], Any], count: Optional[int], seconds: float
                   ) -> Dict[str, Any]:
    """``count`` synchronous round trips (None: for ``seconds``), timing each one."""
    started = time.monotonic()   # one clock for all processes: when each block ran
    clock = time.perf_counter
    lat: List[float] = []
    t0 = clock()
    while True:
        t = clock()
        ask()
        now = clock()
        lat.append(now - t)
        if count is not None:
            if len(lat) >= count:
                break
        elif now - t0 >= seconds:
            break
    p50, p99 = percentiles_us(lat)
    return {"n": len(lat), "elapsed": clock() - t0, "p50": p50, "p99": p99,
            "started": started}


def _requester(ctl: "_ChildControl", opts: Options, ask: Callable[[], Any]) -> Dict[str, Any]:
    """A ready requester's part. ``opts.rounds`` 0: one run of ``opts``' length on
    go. Otherwise (interleaved rounds) every message from the bench is a block,
    ``(count, seconds)`` as :func:`_latency_block` takes them, answered with its
    result, until stop."""
    msg = ctl.wait_go(None if opts.rounds else 60.0)
    if not opts.rounds:
        return {} if msg == "stop" else _latency_loop(opts, ask)
    while msg != "stop":
        count, seconds = msg
        ctl.answer(_latency_block(ask, count, seconds))
        msg = ctl.wait_go(None)   # the other systems' blocks run meanwhile
    return {}


def _rc_responder_child(ctl: "_ChildControl", url: str, concurrency: int = 16) -> None:
    from .client import connect

    with connect(url) as c:
        c.serve(SERVICE, lambda m: m.payload, concurrency=concurrency)
        c.flush()
        ctl.ready()
        ctl.wait_stop()


def _rc_requester_child(ctl: "_ChildControl", url: str, opts: Options) -> Dict[str, Any]:
    from .client import connect

    payload = opts.payload()
    with connect(url) as c:
        ctl.ready()
        return _requester(ctl, opts, lambda: c.request(SERVICE, payload, timeout=10))


def _zmq_rep_child(ctl: "_ChildControl", endpoint: str, bind: bool) -> None:
    import zmq

    s = _zmq_socket(zmq.REP)
    s.bind(endpoint) if bind else s.connect(endpoint)
    ctl.ready()
    while not ctl.should_stop():
        if s.poll(100):
            s.send(s.recv())
    s.close(0)


def _zmq_req_child(ctl: "_ChildControl", endpoint: str, opts: Options) -> Dict[str, Any]:
    import zmq

    s = _zmq_socket(zmq.REQ)
    s.connect(endpoint)
    payload = opts.payload()
    send, recv = s.send, s.recv

    def ask() -> None:
        send(payload)
        recv()

    ctl.ready()
    out = _requester(ctl, opts, ask)
    s.close(0)
    return out


def _latency_row(name: str, system: str, opts: Options, res: Dict[str, Any]) -> Result:
    rate = res["n"] / max(res["elapsed"], 1e-9)
    return Result(scenario=name, system=system, size=opts.size, subscribers=1,
                  msgs_per_s=rate, deliveries_per_s=rate,
                  p50_us=res["p50"], p99_us=res["p99"], lost=0)


#: interleaved reqrep: rounds run first and thrown away (connections, caches), of
#: WARMUP_TRIPS round trips per system (fewer when --count asks for fewer per round)
WARMUP_ROUNDS = 1
WARMUP_TRIPS = 200


def _rotated(systems: Sequence[str], round_no: int) -> List[str]:
    """The order a round runs the systems in: each round starts one later."""
    k = round_no % len(systems) if systems else 0
    return [*systems[k:], *systems[:k]]


def _run_rounds(name: str, opts: Options, progress: Progress, requesters: Dict[str, Proc]
                ) -> Dict[str, List[Dict[str, Any]]]:
    """``WARMUP_ROUNDS`` + ``opts.rounds`` rounds; each runs one block of round trips
    against every system in turn (``opts.count`` or ``opts.duration`` split evenly
    over the measured rounds), one system at a time, each round starting one
    system later. Returns each system's measured blocks in round order, so that
    index i of every list is round i."""
    count = None if opts.count is None else -(-opts.count // opts.rounds)
    seconds = opts.duration / opts.rounds
    warmup = min(WARMUP_TRIPS, count or WARMUP_TRIPS)
    budget = (seconds if count is None else count / 500) + 60.0
    blocks: Dict[str, List[Dict[str, Any]]] = {system: [] for system in requesters}
    t0 = time.monotonic()
    for r in range(WARMUP_ROUNDS + opts.rounds):
        stage = "warm-up" if r < WARMUP_ROUNDS else f"round {r - WARMUP_ROUNDS + 1}/{opts.rounds}"
        for system in _rotated(list(requesters), r):
            p = requesters[system]
            p.go((warmup, seconds) if r < WARMUP_ROUNDS else (count, seconds))
            t_block = time.monotonic()
            while not p.conn.poll(0.2):
                if time.monotonic() - t_block > budget:
                    raise TimeoutError(f"{name} {system}: no result within {budget:.0f} s")
                progress.update(f"{name} {stage} {system}", time.monotonic() - t0)
            res = p.result(0)
            if r >= WARMUP_ROUNDS:
                blocks[system].append(res)
    progress.clear()
    return blocks


def _round_ratios(blocks: Dict[str, List[Dict[str, Any]]], system: str, baseline: str
                  ) -> List[float]:
    """Per round, ``system``'s p50 over ``baseline``'s: two systems measured
    seconds apart, whatever the machine did between rounds."""
    return [a["p50"] / b["p50"] for a, b in zip(blocks[system], blocks[baseline])]


def _span(values: Sequence[float], fmt: str) -> str:
    """``"lo-hi"`` of ``values`` in ``fmt``; one number when both print the same."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def _rounds_rows(name: str, opts: Options, blocks: Dict[str, List[Dict[str, Any]]],
                 baselines: Sequence[str]) -> List[Result]:
    """One row per system: p50 and p99 the medians over rounds of each round's,
    the rates over all measured round trips. Notes: each system's spread over
    rounds; under each of ``baselines``, every ringcast row's per-round p50
    ratio to it, median and range."""
    rows = []
    for system, bs in blocks.items():
        n = sum(b["n"] for b in bs)
        rate = n / max(sum(b["elapsed"] for b in bs), 1e-9)
        p50s = [b["p50"] for b in bs]
        p99s = [b["p99"] for b in bs]
        note = (f"{len(bs)} rounds of {_span([b['n'] for b in bs], 'd')} round trips; "
                f"p50 by round {_span(p50s, '.1f')} us, p99 {_span(p99s, '.1f')} us")
        if system in baselines:
            ratios = []
            for ours in blocks:
                if ours.startswith("ringcast"):
                    rs = _round_ratios(blocks, ours, system)
                    ratios.append(f"{ours} {statistics.median(rs):.2f}x "
                                  f"({_span(rs, '.2f')})")
            note += "; p50 ratio to this within each round, median (range): "
            note += ", ".join(ratios)
        rows.append(Result(scenario=name, system=system, size=opts.size, subscribers=1,
                           msgs_per_s=rate, deliveries_per_s=rate,
                           p50_us=statistics.median(p50s), p99_us=statistics.median(p99s),
                           lost=0, note=note))
    return rows


REQREP_BASELINES = ("pyzmq REQ/REP", "zmq.proxy ROUTER/DEALER")


def _reqrep_interleaved(name: str, opts: Options, progress: Progress) -> List[Result]:
    """Every system set up at once (three brokers with their responders, a REP,
    a ``zmq.proxy`` with its REP; a requester each) and kept running while
    :func:`_run_rounds` measures them in turn."""
    spins = [("ringcast", None), ("ringcast --spin-us 0", 0.0),
             (f"ringcast --spin-us {int(SPIN * 1e6)}", SPIN)]
    servers: List[Spec] = [("broker", _broker_child, (False, spin)) for _, spin in spins]
    servers.append(("proxy", _zmq_proxy_child, ("ROUTER", "DEALER")))
    with processes(*servers) as started:
        urls = [p.ready_info for p in started[:len(spins)]]
        front, back = started[-1].ready_info
        ep = free_tcp_endpoint()
        peers: List[Spec] = [("responder", _rc_responder_child, (url,)) for url in urls]
        peers += [("rep", _zmq_rep_child, (ep, True)), ("rep", _zmq_rep_child, (back, False))]
        askers: List[Spec] = [("requester", _rc_requester_child, (url, opts)) for url in urls]
        askers += [("req", _zmq_req_child, (ep, opts)), ("req", _zmq_req_child, (front, opts))]
        systems = [label for label, _ in spins] + list(REQREP_BASELINES)
        with processes(*peers, *askers) as procs:
            blocks = _run_rounds(name, opts, progress,
                                 dict(zip(systems, procs[len(peers):])))
    return _rounds_rows(name, opts, blocks, REQREP_BASELINES)


def _reqrep_one_after_another(name: str, opts: Options, progress: Progress) -> List[Result]:
    """``--rounds 0``: each system alone with fresh processes, one after another."""
    rows = []
    with _server("broker", _broker_child) as url:
        (res,) = _measure(f"{name} ringcast", opts, progress,
                          [("requester", _rc_requester_child, (url, opts))],
                          peers=[("responder", _rc_responder_child, (url,))])
    rows.append(_latency_row(name, "ringcast", opts, res))
    for spin in (0.0, SPIN):
        label = f"ringcast --spin-us {int(spin * 1e6)}"
        with _server("broker", _broker_child, False, spin) as url:
            (res,) = _measure(f"{name} {label}", opts, progress,
                              [("requester", _rc_requester_child, (url, opts))],
                              peers=[("responder", _rc_responder_child, (url,))])
        rows.append(_latency_row(name, label, opts, res))
    ep = free_tcp_endpoint()
    (res,) = _measure(f"{name} pyzmq", opts, progress, [("req", _zmq_req_child, (ep, opts))],
                      peers=[("rep", _zmq_rep_child, (ep, True))])
    rows.append(_latency_row(name, "pyzmq REQ/REP", opts, res))
    with _server("proxy", _zmq_proxy_child, "ROUTER", "DEALER") as (front, back):
        (res,) = _measure(f"{name} zmq.proxy", opts, progress,
                          [("req", _zmq_req_child, (front, opts))],
                          peers=[("rep", _zmq_rep_child, (back, False))])
    rows.append(_latency_row(name, "zmq.proxy ROUTER/DEALER", opts, res))
    return rows


@scenario("reqrep", "synchronous request/reply latency through the broker (p50/p99), "
          "as `ringcast broker` runs by default, never spinning (--spin-us 0) and "
          "always spinning (--spin-us 1000); "
          "baselines pyzmq REQ/REP direct, REQ -> ROUTER/DEALER proxy -> REP, and "
          "nats-server + nats-py request() where installed; all but nats measured "
          "in --rounds interleaved rounds",
          group="broker")
def net_reqrep(name: str, opts: Options, progress: Progress) -> List[Result]:
    if _pyzmq_missing(name):
        return []
    if opts.rounds:
        rows = _reqrep_interleaved(name, opts, progress)
    else:
        rows = _reqrep_one_after_another(name, opts, progress)
    rows.extend(_nats_reqrep_rows(name, opts, progress))
    return rows


def _rc_pipelined_child(ctl: "_ChildControl", url: str, opts: Options,
                        uvloop: bool = False) -> Dict[str, Any]:
    """asyncio client with ``opts.inflight`` requests outstanding at all times,
    on asyncio's own event loop or on uvloop's."""
    import asyncio

    from .aio_client import connect

    payload = opts.payload()

    async def main() -> Dict[str, Any]:
        conn = await connect(url)
        try:
            ctl.ready()
            if ctl.wait_go() == "stop":
                return {}
            for _ in range(20):  # warm-up, once the responder is surely registered
                await conn.request(SERVICE, payload, timeout=10)
            clock = time.perf_counter
            lat: List[float] = []
            t0 = clock()
            stop_at = None if opts.count is not None else t0 + opts.duration
            budget = [opts.count if opts.count is not None else -1]

            async def worker() -> None:
                while True:
                    if budget[0] == 0 or (stop_at is not None and clock() >= stop_at):
                        return
                    budget[0] -= 1
                    t = clock()
                    await conn.request(SERVICE, payload, timeout=30)
                    lat.append(clock() - t)

            await asyncio.gather(*(worker() for _ in range(opts.inflight)))
            elapsed = clock() - t0
        finally:
            await conn.close()
        p50, p99 = percentiles_us(lat)
        return {"n": len(lat), "elapsed": elapsed, "p50": p50, "p99": p99}

    if uvloop:
        import uvloop as _uvloop

        return _uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


def _zmq_echo_child(ctl: "_ChildControl", endpoint: str, bind: bool, kind: str) -> None:
    """Echo every multipart message back (a ROUTER server, or a DEALER worker
    behind a ROUTER/DEALER proxy), until stop."""
    import zmq

    s = _zmq_socket(getattr(zmq, kind))
    s.bind(endpoint) if bind else s.connect(endpoint)
    ctl.ready()
    recv, send = s.recv_multipart, s.send_multipart
    while not ctl.should_stop():
        if s.poll(100):
            for _ in range(1000):
                try:
                    send(recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
    s.close(0)


def _zmq_pipelined_child(ctl: "_ChildControl", endpoint: str, opts: Options) -> Dict[str, Any]:
    """A DEALER keeping ``opts.inflight`` requests outstanding ([b"", payload],
    as REQ would frame them); replies come back in order, so latency is
    measured against a FIFO of send times."""
    import collections as _c

    import zmq

    s = _zmq_socket(zmq.DEALER)
    s.connect(endpoint)
    payload = opts.payload()
    frames = [b"", payload]
    for _ in range(20):
        s.send_multipart(frames)
        s.recv_multipart()
    ctl.ready()
    if ctl.wait_go() == "stop":
        return {}
    clock = time.perf_counter
    sent_at: "_c.deque[float]" = _c.deque()
    lat: List[float] = []
    t0 = clock()
    limit = opts.count
    issued = 0

    def more() -> bool:
        if limit is not None:
            return issued < limit
        return clock() - t0 < opts.duration

    for _ in range(opts.inflight):
        if not more():
            break
        sent_at.append(clock())
        s.send_multipart(frames)
        issued += 1
    while sent_at:
        s.recv_multipart()
        now = clock()
        lat.append(now - sent_at.popleft())
        if more():
            sent_at.append(now)
            s.send_multipart(frames)
            issued += 1
    elapsed = clock() - t0
    s.close(0)
    p50, p99 = percentiles_us(lat)
    return {"n": len(lat), "elapsed": elapsed, "p50": p50, "p99": p99}


@scenario("reqrep-pipelined",
          "request/reply throughput with --inflight requests outstanding (asyncio client); "
          "baselines pyzmq DEALER -> ROUTER direct and through a ROUTER/DEALER proxy",
          group="broker")
def net_reqrep_pipelined(name: str, opts: Options, progress: Progress) -> List[Result]:
    if _pyzmq_missing(name):
        return []
    rows = []
    loops = [("ringcast", False)]
    if _importable("uvloop"):
        loops.append(("ringcast (uvloop)", True))
    else:
        _skip(name, "ringcast (uvloop)", "uvloop is not installed (pip install uvloop)")
    with _server("broker", _broker_child) as url:
        for system, uvloop in loops:
            (res,) = _measure(
                f"{name} {system}", opts, progress,
                [("requester", _rc_pipelined_child, (url, opts, uvloop))],
                peers=[("responder", _rc_responder_child, (url, min(opts.inflight, 1024)))])
            rows.append(_latency_row(name, system, opts, res))
    ep = free_tcp_endpoint()
    (res,) = _measure(f"{name} pyzmq", opts, progress,
                      [("client", _zmq_pipelined_child, (ep, opts))],
                      peers=[("server", _zmq_echo_child, (ep, True, "ROUTER"))])
    rows.append(_latency_row(name, "pyzmq DEALER/ROUTER", opts, res))
    with _server("proxy", _zmq_proxy_child, "ROUTER", "DEALER") as (front, back):
        (res,) = _measure(f"{name} zmq.proxy", opts, progress,
                          [("client", _zmq_pipelined_child, (front, opts))],
                          peers=[("worker", _zmq_echo_child, (back, False, "DEALER"))])
    rows.append(_latency_row(name, "zmq.proxy ROUTER/DEALER", opts, res))
    return rows


STALLED_CAPACITY = 8192


def _rc_stalled_child(ctl: "_ChildControl", url: str) -> Dict[str, Any]:
    """A subscriber that reads nothing (drop_oldest, 8192 buffered at the broker)
    until the bench says stop, then counts what it can still take."""
    from . import errors
    from .client import connect

    with connect(url) as c:
        sub = c.subscribe("bench.>", capacity=STALLED_CAPACITY, overflow="drop_oldest")
        c.flush()
        ctl.ready()
        ctl.wait_stop()
        n = 0
        while True:
            try:
                msgs = sub.recv_many(65536, timeout=0.5)
            except errors.Timeout:
                break
            n += sum(1 for m in msgs if m.subject != END)
        return {"received": n, "t_last": time.monotonic(), "dropped": sub.dropped}


def _rss_note(samples: List[Tuple[float, int]], what: str) -> str:
    if not samples:
        return f"{what} RSS: not sampled"
    mb = [rss / 2**20 for _, rss in samples]
    step = max(1, len(samples) // 8)
    series = ", ".join(f"{t:.1f}s {rss / 2**20:.0f}" for t, rss in samples[::step])
    return (f"{what} RSS MB start {mb[0]:.0f}, max {max(mb):.0f}, end {mb[-1]:.0f} "
            f"({series})")


def _slow_row(name: str, system: str, opts: Options, pub: Dict[str, Any],
              healthy: Dict[str, Any], stalled: Dict[str, Any], note: str) -> Result:
    elapsed = max(healthy["t_last"] - pub["t0"], 1e-9)
    rate = healthy["received"] / elapsed
    lost = 2 * pub["sent"] - healthy["received"] - stalled["received"]
    return Result(scenario=name, system=system, size=opts.size, subscribers=2,
                  msgs_per_s=rate, deliveries_per_s=rate, lost=lost, note=note)


def _stalled_run(server: Proc, label: str, opts: Options, progress: Progress,
                 healthy: Spec, stalled: Spec, pub: Spec
                 ) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any],
                            List[Tuple[float, int]]]:
    """Run a healthy subscriber, a stalled one and a publisher against ``server``
    (a broker or proxy sampling its RSS); the stalled one is read only once the
    others are done. Returns the publisher's, healthy and stalled results and
    the server's RSS samples."""
    with processes(healthy, stalled, pub) as (healthy_p, stalled_p, pub_p):
        server.go()   # the RSS clock starts with the publisher
        healthy_res, pub_res = _collect([healthy_p, pub_p], progress, label, _budget(opts))
        stalled_res = stalled_p.finish()
    return pub_res, healthy_res, stalled_res, server.finish()


@scenario("slow-consumer",
          "1 publisher -> 1 healthy + 1 stalled subscriber; broker RSS over time and drops "
          "(ringcast: drop_oldest for the stalled one; baseline zmq.proxy with pyzmq's "
          "default high-water marks)", default_subscribers=2, group="broker", drop_policy=True)
def net_slow_consumer(name: str, opts: Options, progress: Progress) -> List[Result]:
    if _pyzmq_missing(name):
        return []
    rows = []
    with processes(("broker", _broker_child, (True,))) as (broker,):
        url = broker.ready_info
        pub, healthy, stalled, samples = _stalled_run(
            broker, f"{name} ringcast", opts, progress,
            ("healthy", _rc_sub_child, (url, opts)), ("stalled", _rc_stalled_child, (url,)),
            ("pub", _rc_pub_child, (url, opts, True)))
    note = (f"{_rss_note(samples, 'broker')}; drops counted by the broker {pub['dropped']}, "
            f"seen by the stalled subscriber as sequence gaps {stalled['dropped']}")
    rows.append(_slow_row(name, "ringcast", opts, pub, healthy, stalled, note))

    with processes(("proxy", _zmq_proxy_child, ("XSUB", "XPUB", None, True))) as (proxy,):
        front, back = proxy.ready_info
        pub, healthy, stalled, samples = _stalled_run(
            proxy, f"{name} zmq.proxy", opts, progress,
            ("healthy", _zmq_sub_child, (back, 0, True, None)),
            ("stalled", _zmq_sub_child, (back, 1, True, None, True)),
            ("pub", _zmq_pub_child, (front, False, 2, True, opts, None)))
    note = f"{_rss_note(samples, 'proxy')}; drops not counted anywhere (silent)"
    rows.append(_slow_row(name, "zmq.proxy XSUB/XPUB", opts, pub, healthy, stalled, note))
    return rows


def _selftest_child(ctl: "_ChildControl", fail: Optional[str]) -> str:
    """A trivial child for the bench's own tests of :func:`processes`."""
    if fail:
        raise RuntimeError(fail)
    ctl.ready()
    ctl.wait_go()
    return "done"


# -- running and reporting ------------------------------------------------------------------------


def run_scenarios(names: Sequence[str], opts: Options, progress: Optional[Progress] = None,
                  failed: Optional[List[str]] = None) -> List[Result]:
    """Run scenarios in order. One that raises is reported on stderr and named
    in ``failed`` (when given; otherwise the error propagates), and the rest
    still run, so one broken scenario does not cost the whole table."""
    progress = progress if progress is not None else Progress()
    results: List[Result] = []
    for name in names:
        try:
            results.extend(SCENARIOS[name].run(opts, progress))
        except Exception as exc:
            progress.clear()
            if failed is None:
                raise
            failed.append(name)
            print(f"ringcast bench: scenario {name} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    return results


def render_table(results: Sequence[Result]) -> str:
    """A plain-text table; ``x first`` compares each row's deliveries/s with the
    first non-ringcast row of the same scenario (its main baseline)."""
    header = ("scenario", "system", "size", "subs", "msgs/s", "deliveries/s",
              "p50 us", "p99 us", "lost", "ringcast x")
    rows: List[Tuple[str, ...]] = []
    by_scenario: Dict[str, List[Result]] = collections.OrderedDict()
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    for rs in by_scenario.values():
        ours = next((r for r in rs if r.system == "ringcast"), None)
        for r in rs:
            ratio = ""
            if ours is not None and not r.system.startswith("ringcast") \
                    and r.deliveries_per_s > 0:
                ratio = f"{ours.deliveries_per_s / r.deliveries_per_s:.1f}"
            rows.append((
                r.scenario, r.system, str(r.size), str(r.subscribers),
                _si(r.msgs_per_s), _si(r.deliveries_per_s),
                "-" if r.p50_us is None else f"{r.p50_us:.1f}",
                "-" if r.p99_us is None else f"{r.p99_us:.1f}",
                str(r.lost), ratio,
            ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    left = {0, 1}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines.extend(fmt(row) for row in rows)
    notes = [f"{r.scenario} / {r.system}: {r.note}" for r in results if r.note]
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def _si(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k"
    return f"{rate:.0f}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(SCENARIOS)
    p.add_argument("scenarios", nargs="*", default=["all"], metavar="SCENARIO",
                   help=f"scenario names, 'embedded', 'broker' or 'all' (default). "
                        f"Known: {names}")
    p.add_argument("--size", type=int, default=16, help="payload bytes (default 16)")
    p.add_argument("--subscribers", type=int, default=None,
                   help="subscribers / consumers (default: per scenario, fan-out 4)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--duration", type=float, default=2.0,
                     help="seconds to run each system of each scenario (default 2)")
    how.add_argument("--count", type=int, default=None,
                     help="messages to send per system instead of a duration")
    p.add_argument("--batch", type=int, default=1000,
                   help="messages per publish/receive cycle (default 1000)")
    p.add_argument("--publish", choices=("call", "many"), default="call",
                   help="ringcast publishing: one publish() per message (default) "
                        "or publish_many() per cycle")
    p.add_argument("--recv", choices=("messages", "payloads"), default="messages",
                   help="ringcast receiving: recv_many() Message objects (default) "
                        "or recv_payloads()")
    p.add_argument("--inflight", type=int, default=100,
                   help="requests in flight for reqrep-pipelined (default 100)")
    p.add_argument("--rounds", type=int, default=10,
                   help="reqrep: measure the systems in this many interleaved rounds, "
                        "each system's --duration/--count split over them, after one "
                        "warm-up round; p50/p99 are medians over rounds (default 10; "
                        "0: one system after another)")
    p.add_argument("--no-external", action="store_true",
                   help="leave out the redis-server / nats-server baselines even where "
                        "they are installed")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--no-progress", action="store_true",
                   help="no live progress line even on a terminal")


_GROUPS = ("embedded", "broker")


def _resolve(names: Sequence[str]) -> List[str]:
    out: List[str] = []
    for name in names or ["all"]:
        if name == "all" or name in _GROUPS:
            out.extend(n for n, sc in SCENARIOS.items()
                       if n not in out and (name == "all" or sc.group == name))
        elif name in SCENARIOS:
            if name not in out:
                out.append(name)
        else:
            raise ValueError(f"unknown scenario {name!r}; known: all, embedded, broker, "
                             f"{', '.join(SCENARIOS)}")
    return out


def run(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> int:
    """Run parsed arguments (the ``ringcast bench`` subcommand calls this)."""
    if args.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:20s} {sc.help}")
        return 0
    try:
        names = _resolve(args.scenarios)
    except ValueError as exc:
        print(f"ringcast bench: error: {exc}", file=sys.stderr)
        return 2
    for flag, value, low in (("--size", args.size, 1), ("--batch", args.batch, 1),
                             ("--inflight", args.inflight, 1),
                             ("--count", args.count, 1), ("--rounds", args.rounds, 0)):
        if value is not None and value < low:
            print(f"ringcast bench: error: {flag} must be at least {low}", file=sys.stderr)
            return 2
    if args.subscribers is not None and args.subscribers < 1:
        print("ringcast bench: error: --subscribers must be at least 1", file=sys.stderr)
        return 2
    if args.count is None and not 0 < args.duration < float("inf"):   # also NaN
        print("ringcast bench: error: --duration must be a positive number of seconds",
              file=sys.stderr)
        return 2
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        # found now, not after the whole run
        print(f"ringcast bench: error: --json {args.json}: no such directory", file=sys.stderr)
        return 2
    opts = Options(size=args.size, subscribers=args.subscribers, duration=args.duration,
                   count=args.count, batch=args.batch, publish=args.publish, recv=args.recv,
                   inflight=args.inflight, rounds=args.rounds,
                   external=not args.no_external)
    progress = Progress(enabled=False if args.no_progress else None)
    failed: List[str] = []
    results = run_scenarios(names, opts, progress, failed)
    print(render_table(results))
    if args.json:
        doc = to_json(results, machine_info(sys.argv[1:] if argv is None else argv))
        validate(doc)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    lost = [r for r in results if r.system == "ringcast" and r.lost
            and not SCENARIOS[r.scenario].drop_policy]
    for r in lost:
        print(f"ringcast bench: {r.scenario}: ringcast lost {r.lost} deliveries",
              file=sys.stderr)
    return 1 if lost or failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ringcast bench`` / ``python -m ringcast.bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="ringcast bench",
        description="Throughput of ringcast next to its alternatives, measured in one run.")
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)


def _register_subcommand() -> None:
    """``ringcast bench`` in the main command line (ringcast.cli loads this module)."""
    try:
        from . import cli
    except ImportError:  # the command line is optional for the bench
        return
    register = getattr(cli, "register", None)
    if register is not None:
        register("bench", "compare ringcast with its alternatives (throughput, loss)",
                 add_arguments, run)


_register_subcommand()

if __name__ == "__main__":
    raise SystemExit(main())
