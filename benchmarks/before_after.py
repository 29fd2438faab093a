"""Compare two runs of benchmarks/maml.py or benchmarks/blackbox.py (before and after a change); see
before_after.sh, which runs them.

    BENCH=maml|blackbox python benchmarks/before_after.py BEFORE.json AFTER.json

Speed is compared through each run's ratio to a peer measured in the same run (maml.py: learn2learn; blackbox.py:
MAML second-order), as ``after/before`` of the ratio: 1.0 means unchanged, below 1 slower; memory directly
(``after/before`` of the bytes one training step adds). Prints the table and saves
``benchmarks/results/before_after_$BENCH.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common import save

SPEED_TABLES = {"maml": ("ratio_vs_learn2learn", "ratio_vs_learn2learn_channels_last"),
                "blackbox": ("train_x_maml", "eval_x_maml")}


def quotients(before: dict, after: dict, bench: str = "maml") -> dict:
    if bench == "blackbox":
        before, after = before["speed"], after["speed"]
    speed = {table: {k: after[table][k] / before[table][k] for k in before[table] if k in after[table]}
             for table in SPEED_TABLES[bench]}
    old = {(r["mode"], r["steps"]): r["added_bytes"] for r in before.get("memory", [])}
    memory = {f"{r['mode']}@{r['steps']}": r["added_bytes"] / old[(r["mode"], r["steps"])]
              for r in after.get("memory", []) if (r["mode"], r["steps"]) in old}
    return {"speed_ratio_after_over_before": speed, "memory_after_over_before": memory}


def show(result: dict) -> None:
    for table, rows in result["speed_ratio_after_over_before"].items():
        print(f"\n{table}: after / before (1.00 = no change; < 1 slower)")
        for key, value in rows.items():
            print(f"  {key:40s} {value:6.2f}")
    if result["memory_after_over_before"]:
        print("\nmemory added by one training step: after / before")
    for key, value in result["memory_after_over_before"].items():
        print(f"  {key:40s} {value:6.2f}")


def main() -> None:
    before, after = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    bench = os.environ.get("BENCH", "maml")
    result = quotients(before, after, bench)
    show(result)
    save(f"before_after_{bench}", {"before": os.environ.get("REF", sys.argv[1]), "after": os.environ.get("HEAD_REV"),
                               **result, "before_run": before, "after_run": after})


if __name__ == "__main__":
    main()
