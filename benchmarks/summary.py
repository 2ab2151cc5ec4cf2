"""Per-message rates and same-run ratios from pytest-benchmark results.

Used by ``conftest.py`` after a run, or standalone on a saved file::

    python benchmarks/summary.py results.json

Each benchmark's ``extra_info`` says how many messages one round handled
(``msgs``), how many deliveries that made (``deliveries``: messages x
receivers) and whether it is its group's ``baseline``. Rates come from the
median round; ``x base`` is deliveries/s divided by the baseline's (for the
match groups, where a "message" is one lookup, the cost ratio is its
inverse: ``ns/msg`` over the baseline's).
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional


def _rates(bench: Dict[str, Any]) -> Optional[Dict[str, float]]:
    info = bench.get("extra_info") or {}
    stats = bench.get("stats") or {}
    median = stats.get("median")
    msgs = info.get("msgs")
    if not median or not msgs:
        return None
    deliveries = info.get("deliveries", msgs)
    return {
        "ns_per_msg": median / msgs * 1e9,
        "msgs_per_s": msgs / median,
        "deliveries_per_s": deliveries / median,
    }


def table(benchmarks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per benchmark, grouped, with the ratio to its group's baseline."""
    groups: "OrderedDict[str, List[Dict[str, Any]]]" = OrderedDict()
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or "", []).append(bench)
    rows = []
    for group, benches in groups.items():
        base = next((b for b in benches if (b.get("extra_info") or {}).get("baseline")), None)
        base_rates = _rates(base) if base is not None else None
        for bench in benches:
            rates = _rates(bench)
            if rates is None:
                continue
            ratio = None
            if base_rates:
                ratio = rates["deliveries_per_s"] / base_rates["deliveries_per_s"]
            rows.append({
                "group": group,
                "name": bench["name"],
                "baseline": bool((bench.get("extra_info") or {}).get("baseline")),
                "ratio": ratio,
                **rates,
            })
    return rows


def render(benchmarks: List[Dict[str, Any]]) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    rows = table(benchmarks)
    if not rows:
        return ""
    out = ["| group | benchmark | ns/msg | M msgs/s | M deliveries/s | x base |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "base" if r["baseline"] else ("" if r["ratio"] is None else f"{r['ratio']:.2f}")
        out.append(
            f"| {r['group']} | {r['name']} | {r['ns_per_msg']:.1f} | "
            f"{r['msgs_per_s'] / 1e6:.2f} | {r['deliveries_per_s'] / 1e6:.2f} | {ratio} |"
        )
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/summary.py RESULTS.json", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        data = json.load(f)
    print(render(data.get("benchmarks", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
