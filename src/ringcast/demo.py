"""The embedded demo: the order scenario in one process.

An order service publishes ``orders.placed``; billing subscribes to every
order event; shipping runs two competing workers on a queue bound to
``orders.placed``; inventory answers stock requests. Run it with
``ringcast demo`` or ``python -m ringcast.demo``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Dict, List

import ringcast


def run(orders: int = 10, out: "List[str] | None" = None) -> Dict[str, int]:
    """Run the scenario; returns what each service handled."""
    print_lock = threading.Lock()

    def say(line: str) -> None:
        with print_lock:
            if out is not None:
                out.append(line)
            else:
                print(line, flush=True)
    stock = {"widget": 5, "gadget": 100}
    handled: Counter[str] = Counter()

    with ringcast.Router() as router:
        router.serve("inventory.check",
                     lambda m: json.dumps({"sku": m.payload.decode(),
                                           "in_stock": stock.get(m.payload.decode(), 0)}).encode())
        billing = router.subscribe("orders.>")
        router.declare_queue("shipping", bind="orders.placed")

        def ship(worker: str) -> None:
            with router.consume("shipping", prefetch=4) as consumer:
                while True:
                    try:
                        msg = consumer.recv(timeout=1.0)
                    except ringcast.Timeout:
                        return
                    order = json.loads(msg.payload)
                    if order.get("last"):
                        msg.ack()
                        router.send("shipping", msg.payload)  # let the other worker stop too
                        return
                    say(f"  shipping/{worker}: ships order {order['id']} ({order['sku']})")
                    handled[f"shipping/{worker}"] += 1
                    msg.ack()

        workers = [threading.Thread(target=ship, args=(w,)) for w in ("w1", "w2")]
        for w in workers:
            w.start()

        for i in range(1, orders + 1):
            sku = "widget" if i % 2 else "gadget"
            reply = router.request("inventory.check", sku.encode(), timeout=1.0)
            in_stock = json.loads(reply.payload)["in_stock"]
            say(f"orders: order {i} for {sku}: inventory says {in_stock} in stock")
            handled["inventory"] += 1
            router.publish("orders.placed", json.dumps({"id": i, "sku": sku}).encode())
        router.publish("orders.placed", json.dumps({"last": True}).encode())

        for msg in billing.recv_many(orders + 1, timeout=1.0):
            order = json.loads(msg.payload)
            if not order.get("last"):
                say(f"  billing: invoices order {order['id']}")
                handled["billing"] += 1
        for w in workers:
            w.join()
        handled["shipping"] = handled["shipping/w1"] + handled["shipping/w2"]
        say(f"done: {dict(handled)}")
    return dict(handled)


def main() -> int:
    run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
