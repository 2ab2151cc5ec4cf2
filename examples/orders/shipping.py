"""Shipping worker: competes with the other workers for the ``shipping``
queue, which is bound to ``orders.placed`` (point-to-point, acked)."""

import json
import signal
import sys

from common import say, url

import ringcast


def main() -> None:
    me = sys.argv[2] if len(sys.argv) > 2 else "shipping"
    with ringcast.connect(url(), name=me) as client:
        client.declare_queue("shipping", bind="orders.placed")
        jobs = client.consume("shipping", prefetch=1)
        client.flush()
        say(me, "ready")
        for msg in jobs:
            order = json.loads(msg.payload)
            say(me, f"shipped order {order['id']} ({order['item']})")
            msg.ack()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        pass
