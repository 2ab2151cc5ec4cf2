"""The embedded demo (`ringcast demo`) must really move messages."""

import ringcast.demo


def test_demo_delivers_every_order_to_every_service():
    lines = []
    handled = ringcast.demo.run(orders=12, out=lines)
    assert handled["inventory"] == 12
    assert handled["billing"] == 12
    assert handled["shipping"] == 12  # split between the two competing workers
    shipped = sorted(int(line.split("order ")[1].split()[0])
                     for line in lines if "ships order" in line)
    assert shipped == list(range(1, 13))
