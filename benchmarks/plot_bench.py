"""Throughput vs payload size and vs number of subscribers, as a PNG.

Two steps, so that plotting needs matplotlib but not ringcast, and the bench
needs ringcast but not matplotlib::

    python benchmarks/plot_bench.py collect bench-plot/ [REPEAT]   # `ringcast bench` per point
    python benchmarks/plot_bench.py plot bench-plot/ docs/bench-throughput.png

``collect`` runs ``python -m ringcast bench`` REPEAT times (default 3) per
point and keeps every ``--json`` file; ``plot`` draws, per system and point,
the best of the repeats (on a shared machine, other people's load only ever
slows a run down): ``embedded-pubsub`` and ``pubsub`` at every payload size,
``embedded-fanout`` and ``fanout`` at every subscriber count. Each system
runs for DURATION seconds per point (a fixed message count made the
large-payload broker runs mostly connection start-up); an unlimited-HWM pyzmq
publisher may queue up to what it sends in that time (under 2 GB here).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

SIZES = [16, 256, 1024, 4096, 16384]
SUBSCRIBERS = [1, 2, 4, 8]
DURATION = 1.5   # seconds per system per point


def collect(out: str, repeat: int = 3) -> int:
    os.makedirs(out, exist_ok=True)
    runs = []
    for size in SIZES:
        for sc in ("embedded-pubsub", "pubsub"):
            runs.append((sc, size, 1))
    for subs in SUBSCRIBERS:
        for sc in ("embedded-fanout", "fanout"):
            runs.append((sc, 16, subs))
    for k in range(repeat):
        for sc, size, subs in runs:
            path = os.path.join(out, f"{sc}-size{size}-subs{subs}-{k}.json")
            # by duration: a fixed count made large-payload broker runs a few
            # tenths of a second, mostly connection start-up and window ramp-up
            cmd = [sys.executable, "-m", "ringcast", "bench", sc, "--size", str(size),
                   "--subscribers", str(subs), "--duration", str(DURATION), "--json", path]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return 0


def _load(directory: str) -> List[Dict[str, Any]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.load(f)["results"])
    return rows


def plot(directory: str, png: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _load(directory)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    panels = [
        (axes[0][0], "embedded-pubsub", "size", "msgs_per_s", "in-process, 1 subscriber"),
        (axes[0][1], "pubsub", "size", "msgs_per_s", "through a broker, 1 subscriber"),
        (axes[1][0], "embedded-fanout", "subscribers", "deliveries_per_s",
         "in-process fan-out, 16-byte payloads"),
        (axes[1][1], "fanout", "subscribers", "deliveries_per_s",
         "fan-out through a broker, 16-byte payloads"),
    ]
    for ax, scenario, xkey, ykey, title in panels:
        picked = [r for r in rows if r["scenario"] == scenario]
        for system in dict.fromkeys(r["system"] for r in picked):
            best: Dict[int, float] = {}
            for r in picked:
                if r["system"] == system:
                    best[r[xkey]] = max(best.get(r[xkey], 0.0), r[ykey])
            pts = sorted(best.items())
            style = "o-" if system == "ringcast" else "s--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=system,
                    linewidth=2.2 if system == "ringcast" else 1.2)
        ax.set_yscale("log")
        if xkey == "size":
            ax.set_xscale("log", base=2)
            ax.set_xlabel("payload bytes")
        else:
            ax.set_xlabel("subscribers")
            ax.set_xticks(SUBSCRIBERS)
        ax.set_ylabel("messages/s received" if ykey == "msgs_per_s" else "deliveries/s")
        ax.set_title(f"{scenario}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    machine = {}
    first = sorted(glob.glob(os.path.join(directory, "*.json")))
    if first:
        with open(first[0], encoding="utf-8") as f:
            machine = json.load(f)["machine"]
    fig.suptitle(f"ringcast bench (best of the repeats per point) — {machine.get('cpu', '?')}, "
                 f"{machine.get('cores', '?')} cores, Python {machine.get('python', '?')}, "
                 f"ringcast {machine.get('ringcast', '?')}")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"wrote {png}")
    return 0


def main(argv: List[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "collect":
        return collect(argv[1], int(argv[2]) if len(argv) == 3 else 3)
    if len(argv) == 3 and argv[0] == "plot":
        return plot(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
