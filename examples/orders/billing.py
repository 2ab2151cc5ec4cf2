"""Billing: subscribes to ``orders.placed`` (pub/sub) and invoices each order."""

import json
import signal

from common import say, url

import ringcast


def main() -> None:
    with ringcast.connect(url(), name="billing") as client:
        invoices = client.subscribe("orders.placed")
        client.flush()
        say("billing", "ready")
        for msg in invoices:
            order = json.loads(msg.payload)
            say("billing", f"invoiced order {order['id']} ({order['item']})")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        pass
