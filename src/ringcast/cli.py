"""The ``ringcast`` command line: ``broker``, ``pub``, ``sub``, ``req``, ``stats``, ``demo``.

Each subcommand is one ``register(...)`` call with a function that adds its
arguments and a function that runs it, so a new subcommand (``ringcast
bench``) is added in its own module with ``cli.register`` and one line in
``_PLUGINS``, without touching the others.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import logging
import math
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, NoReturn, Optional, Tuple

from ._version import __version__

DEFAULT_URL = "tcp://127.0.0.1:7450"

Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

_COMMANDS: Dict[str, Tuple[str, Setup, Run]] = {}
#: modules that register further subcommands when imported (if installed)
_PLUGINS: List[str] = ["ringcast.bench"]


def register(name: str, help: str, setup: Setup, run: Run) -> None:
    """Add a subcommand: ``setup(parser)`` declares its arguments, ``run(args)``
    does the work and returns the exit status."""
    _COMMANDS[name] = (help, setup, run)


# -- argument types: a bad value is one line from argparse, exit status 2 -----------------
def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _bytes_arg(text: str) -> int:
    n = _int_arg(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: no bound), not {n}")
    return n


def _at_least(least: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        n = _int_arg(text)
        if n < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, not {n}")
        return n
    check.__name__ = f"int >= {least}"
    return check


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def _seconds_arg(text: str) -> float:
    t = _seconds(text)
    if not t >= 0:   # also NaN
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return t


def _heartbeat_arg(text: str) -> float:
    t = _seconds(text)
    if not 0 < t < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, not {text}")
    return t


def _endpoint(text: str, bind: bool) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a tcp://HOST:PORT or ipc://PATH endpoint")
    if scheme == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not host:
            raise argparse.ArgumentTypeError(f"{text!r} has no HOST:PORT")
        if not (bind and port == "*"):
            least = 0 if bind else 1
            if not port.isdigit() or not least <= int(port) <= 65535:
                raise argparse.ArgumentTypeError(
                    f"{text!r}: the port must be {least}..65535"
                    + (" or *" if bind else ""))
    return text


def _bind_arg(text: str) -> str:
    return _endpoint(text, bind=True)


def _url_value(text: str) -> str:
    return _endpoint(text, bind=False)


def _dir_arg(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return text


# -- broker ------------------------------------------------------------------------------


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", action="append", metavar="ENDPOINT", type=_bind_arg,
                   help=f"tcp:// or ipc:// endpoint to listen on, repeatable "
                        f"(default {DEFAULT_URL})")
    p.add_argument("--heartbeat", type=_heartbeat_arg, default=1.0,
                   help="seconds (default 1.0)")
    p.add_argument("--max-frame", type=_at_least(1), default=None,
                   help="bytes per ZeroMQ frame")
    p.add_argument("--max-message", type=_at_least(1), default=None,
                   help="bytes per message payload")
    p.add_argument("--max-buffer-bytes", type=_bytes_arg, default=None, metavar="BYTES",
                   help="payload bytes a client's subscription or queue may hold here "
                        "(default 64 MiB; 0: bounded by capacity only)")
    p.add_argument("--data-dir", default=None, type=_dir_arg,
                   help="directory of the durable queues' logs (needed for durable=True)")
    p.add_argument("--fsync", choices=("always", "interval", "never"), default="interval",
                   help="default fsync policy of durable queues (docs/reliability.md)")
    p.add_argument("--spin-us", type=_at_least(0), default=None, metavar="US",
                   help="after input, poll this many microseconds before sleeping: lower "
                        "request latency for a core kept busy (0: never spin; default: "
                        "around request traffic only, up to 1000 after an answer)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def keep_freed_heap() -> bool:
    """Make a broker process keep freed heap memory for reuse (glibc only).

    glibc hands the top of its heap back to the kernel once 128 KiB of it is
    free, and faults the pages in again on the next frame: with payloads over
    512 bytes (outside pymalloc) that was a page fault every few messages and a
    quarter of the broker's CPU. A process that is a broker keeps up to 64 MiB
    free instead. Not done by an embedded ``Broker``: the host owns its heap,
    nor when the environment tunes glibc's trimming itself (``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_TOP_PAD_`` or their ``GLIBC_TUNABLES``): mallopt would override it.
    Returns whether the allocator took the settings."""
    if not sys.platform.startswith("linux"):
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")) \
            or "glibc.malloc.trim_threshold" in tunables or "glibc.malloc.top_pad" in tunables:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad = -1, -2   # <malloc.h>
    return bool(mallopt(m_trim_threshold, 64 << 20)) and bool(mallopt(m_top_pad, 16 << 20))


def collect_less() -> None:
    """Make a broker process's cyclic garbage collector cheaper (CPython's
    defaults suit programs that allocate in bursts). Every request in flight
    holds a few tracked objects, so with the default young-generation
    threshold (700) a collection every ~100 requests walked all of those
    that were still waiting; at 20,000 most die before one runs. What was
    alive at start-up (modules, classes) moves to the permanent generation
    and is never walked again. Not done by an embedded ``Broker``: the host
    owns its collector."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def tune_broker_process() -> None:
    """What a process that is a broker sets up for itself, before serving."""
    keep_freed_heap()
    collect_less()


def _broker(args: argparse.Namespace) -> int:
    from . import _codec, errors
    from .broker import DEFAULT_MAX_BUFFER_BYTES, Broker

    tune_broker_process()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        broker = Broker(args.bind or [DEFAULT_URL], heartbeat=args.heartbeat,
                        data_dir=args.data_dir, fsync=args.fsync,
                        spin=None if args.spin_us is None else args.spin_us / 1e6,
                        max_frame=args.max_frame or _codec.DEFAULT_MAX_FRAME,
                        max_message=args.max_message or _codec.DEFAULT_MAX_MESSAGE,
                        max_buffer_bytes=(DEFAULT_MAX_BUFFER_BYTES
                                          if args.max_buffer_bytes is None
                                          else args.max_buffer_bytes))
    except errors.LimitExceeded as exc:   # limits that contradict each other
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("ringcast.broker").info("signal %d: stopping", signum)
        stop.set()
        broker.stop(timeout=0)

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):  # SIGBREAK: Ctrl-Break on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    broker.start()
    print("ringcast broker listening on " + " ".join(broker.endpoints), flush=True)
    while not stop.wait(0.5):
        if broker._thread is not None and not broker._thread.is_alive():
            return 1
    broker.stop()
    return 0


# -- pub / sub / req ------------------------------------------------------------------------
def _url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, type=_url_value,
                   help=f"broker endpoint (default {DEFAULT_URL})")
    p.add_argument("--timeout", type=_seconds_arg, default=5.0,
                   help="seconds to wait (default 5)")


def _pub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject")
    p.add_argument("data", help="payload (UTF-8)")
    p.add_argument("--count", type=_at_least(1), default=1,
                   help="publish it this many times")
    _url_arg(p)


def _pub(args: argparse.Namespace) -> int:
    from .client import connect

    with connect(args.url, timeout=args.timeout) as client:
        data = args.data.encode()
        for _ in range(args.count):
            client.publish(args.subject, data, timeout=args.timeout)
        client.flush(args.timeout)
    return 0


def _sub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", help="subject pattern: '*' one token, '>' the rest")
    p.add_argument("--count", type=_at_least(0), default=0,
                   help="exit after this many (0: never)")
    _url_arg(p)


def _sub(args: argparse.Namespace) -> int:
    from .client import connect

    with connect(args.url, timeout=args.timeout) as client:
        sub = client.subscribe(args.pattern)
        client.flush(args.timeout)   # in place at the broker before we say so
        n = 0
        try:   # Ctrl-C is how a user stops it, from the moment it says it is ready
            print(f"subscribed to {args.pattern}", file=sys.stderr, flush=True)
            for msg in sub:
                print(f"[{msg.seq}] {msg.subject}: {msg.payload.decode(errors='replace')}",
                      flush=True)
                n += 1
                if args.count and n >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def _req_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("service")
    p.add_argument("data", help="payload (UTF-8)")
    _url_arg(p)


def _req(args: argparse.Namespace) -> int:
    from .client import connect

    with connect(args.url, timeout=args.timeout) as client:
        reply = client.request(args.service, args.data.encode(), timeout=args.timeout)
        print(reply.payload.decode(errors="replace"))
    return 0


def _stats_args(p: argparse.ArgumentParser) -> None:
    _url_arg(p)


def _stats(args: argparse.Namespace) -> int:
    import json

    from .client import connect

    with connect(args.url, timeout=args.timeout) as client:
        print(json.dumps(client.stats(args.timeout), indent=2, sort_keys=True))
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    pass


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main()


register("broker", "run a broker", _broker_args, _broker)
register("pub", "publish a message", _pub_args, _pub)
register("sub", "print messages on a subject pattern", _sub_args, _sub)
register("req", "send a request and print the reply", _req_args, _req)
register("stats", "print a broker's statistics (JSON)", _stats_args, _stats)
register("demo", "run the embedded orders demo", _demo_args, _demo)


class _Parser(argparse.ArgumentParser):
    """An argument error is one line (and exit status 2), not the usage first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    for module in _PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    parser = _Parser(prog="ringcast", description="ringcast message broker")
    parser.add_argument("--version", action="version", version=f"ringcast {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, setup, run) in _COMMANDS.items():
        p = subs.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    import zmq

    from . import errors

    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:   # Ctrl-C while connecting or waiting: no traceback
        return 130
    except errors.RingcastError as exc:   # no broker, a timeout, a refused argument
        print(f"ringcast {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    except (zmq.ZMQError, OSError) as exc:   # an endpoint or a file that cannot be used
        print(f"ringcast {args.command}: error: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
