"""Order service: asks inventory, then publishes ``orders.placed``."""

import json

from common import say, url

import ringcast

ORDERS = ["book", "lamp", "mug", "lamp", "book", "mug"]


def main() -> None:
    with ringcast.connect(url(), name="orders") as client:
        placed = 0
        for n, item in enumerate(ORDERS, 1):
            reply = client.request("inventory.check", json.dumps({"item": item}).encode(),
                                   timeout=5)
            if not json.loads(reply.payload)["in_stock"]:
                say("orders", f"order {n} ({item}) rejected: out of stock")
                continue
            client.publish("orders.placed", json.dumps({"id": n, "item": item}).encode())
            placed += 1
            say("orders", f"order {n} ({item}) placed")
        client.flush()
        say("orders", f"done, {placed} placed")


if __name__ == "__main__":
    main()
