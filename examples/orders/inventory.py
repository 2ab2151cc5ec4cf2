"""Inventory service: answers ``inventory.check`` requests (request/reply)."""

import json
import signal
import threading

from common import say, url

import ringcast

STOCK = {"book": 3, "lamp": 1, "mug": 10}


def check(msg: ringcast.Message) -> bytes:
    item = json.loads(msg.payload)["item"]
    left = STOCK.get(item, 0)
    if left > 0:
        STOCK[item] = left - 1
    return json.dumps({"item": item, "in_stock": left > 0}).encode()


def main() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ringcast.connect(url(), name="inventory") as client:
        client.serve("inventory.check", check)   # answered on the client's I/O thread
        client.flush()
        say("inventory", "ready")
        while not stop.wait(0.5):   # a timeout lets the handler run, on Windows too
            pass


if __name__ == "__main__":
    main()
