"""Shared by the example's processes: the broker URL and a ready signal."""

import sys


def url() -> str:
    return sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:7450"


def say(who: str, text: str) -> None:
    print(f"{who}: {text}", flush=True)
