"""Inventory service: answers ``inventory.check`` requests (request/reply)."""

import json
import signal

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
    with ringcast.connect(url(), name="inventory") as client:
        client.serve("inventory.check", check)
        client.flush()
        say("inventory", "ready")
        signal.sigwait([signal.SIGTERM, signal.SIGINT])


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    main()
