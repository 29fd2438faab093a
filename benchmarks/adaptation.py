"""What using a trained learner on one new task costs: ``learner.adapt(support)`` then ``adapted(query)``, against
``predict_step`` on the same single task (what ``trainer.predict`` runs).

    python benchmarks/adaptation.py [--repeats 15] [--queries 75] [--shots 1 5]

Every learner on Conv-4 (64 filters) with Omniglot-sized inputs (1 x 28 x 28), random weights and random images (the
time does not depend on them), 5-way tasks with 1 and 5 shots and 75 queries, with the settings of
``benchmarks/learners.py`` (MAML: 3 inner steps at evaluation; iMAML: 16 GD steps; Reptile: 50 steps; ProtoNet; the
black-box aggregators). Timed, in turn within each repeat, median of ``--repeats`` after one warm-up:

* ``adapt``: ``learner.adapt(support_x, support_y)`` with class-name labels (the inner loop, or the prototypes, or
  reading the support set, plus the frozen copy of the network the adapted module keeps);
* ``query``: ``adapted(query_x)`` for the 75 queries;
* ``predict_step``: ``learner.predict_step(one-task batch, 0)`` in evaluation mode, as ``trainer.predict`` runs it:
  adapting and answering the queries in one call.

``query`` and ``predict_step`` run in inference mode (``trainer.predict``'s), so the comparison is of the work done;
``adapt`` runs as a user calls it (it turns gradients on for the inner loop itself).

Reported as ratios (the times of this 2-core machine move by 20-30 % from run to run; ratios taken within one repeat
much less): ``(adapt + query) / predict_step``, the cost of the ``adapt`` path for one batch of queries, and
``predict_step / query``, how many times cheaper each further batch of the task's queries is once adapted than a
``predict_step`` that adapts again. Saves ``benchmarks/results/adaptation.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import save

import lightning_meta
from lightning_meta import IMAML, MAML, BlackBoxAdaptation, MetaLearner, ProtoNet, Reptile, TaskBatch
from lightning_meta.models import Conv4

WAYS = 5
AGGREGATORS = ("mean", "attention", "sequence", "snail")

#: the learners with the settings of benchmarks/learners.py (the evaluation settings are what adapt runs)
LEARNERS: dict[str, Callable[[], MetaLearner]] = {
    "maml": lambda: MAML(Conv4(out_features=WAYS), inner_lr=0.4, eval_inner_steps=3),
    "imaml": lambda: IMAML(Conv4(out_features=WAYS), inner_lr=0.1, inner_steps=16, lam=2.0, cg_steps=5),
    "reptile": lambda: Reptile(Conv4(out_features=WAYS), inner_lr=0.001, inner_steps=5, eval_inner_steps=50),
    "protonet": lambda: ProtoNet(Conv4(embed_only=True)),
    **{
        f"blackbox_{a}": (
            lambda a=a: BlackBoxAdaptation(Conv4(embed_only=True), aggregator=a, ways=WAYS, task_dim=64, hidden=128)
        )
        for a in AGGREGATORS
    },
}


def task(shots: int, queries: int) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    return TaskBatch(
        torch.rand(1, WAYS * shots, 1, 28, 28, generator=g),
        torch.arange(WAYS).repeat_interleave(shots)[None],
        torch.rand(1, queries, 1, 28, 28, generator=g),
        None,
    )


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(name: str, shots: int, queries: int, repeats: int) -> dict:
    torch.manual_seed(0)
    learner = LEARNERS[name]().eval()
    batch = task(shots, queries)
    support_x, query_x = batch.support_x[0], batch.query_x[0]
    names = [f"class_{int(y)}" for y in batch.support_y[0]]

    def predict_step() -> torch.Tensor:
        with torch.inference_mode():
            return learner.predict_step(batch, 0)

    times: dict[str, list[float]] = {"adapt": [], "query": [], "predict_step": []}
    for repeat in range(repeats + 1):  # the first round warms up (allocator, oneDNN primitives) and is dropped
        adapt_s, adapted = timed(lambda: learner.adapt(support_x, names))
        with torch.inference_mode():
            query_s, scores = timed(lambda: adapted(query_x))  # noqa: B023 - called at once
        predict_s, expected = timed(predict_step)
        if repeat == 0:
            difference = (scores - expected[0]).abs().max().item()  # the adapt path answers as predict_step
            continue
        for key, value in (("adapt", adapt_s), ("query", query_s), ("predict_step", predict_s)):
            times[key].append(value)
    adapt_s, query_s, predict_s = (statistics.median(times[k]) for k in ("adapt", "query", "predict_step"))
    ratios = [(a + q) / p for a, q, p in zip(times["adapt"], times["query"], times["predict_step"])]
    return {
        "learner": name,
        "shots": shots,
        "queries": queries,
        "adapt_s": adapt_s,
        "query_s": query_s,
        "predict_step_s": predict_s,
        "adapt_plus_query_over_predict_step": statistics.median(ratios),
        "predict_step_over_query": statistics.median(p / q for q, p in zip(times["query"], times["predict_step"])),
        "max_abs_difference_to_predict_step": difference,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| learner | shots | (adapt + query) / predict_step | predict_step / query | predict_step ms |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['learner']} | {r['shots']} | {r['adapt_plus_query_over_predict_step']:.2f} | "
            f"{r['predict_step_over_query']:.1f} | {1000 * r['predict_step_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per learner and shots (median)")
    parser.add_argument("--queries", type=int, default=75)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--only", nargs="+", choices=list(LEARNERS), default=list(LEARNERS))
    args = parser.parse_args()
    rows = []
    for name in args.only:
        for shots in args.shots:
            rows.append(measure(name, shots, args.queries, args.repeats))
            r = rows[-1]
            print(
                f"{name:20s} {shots}-shot: adapt {1000 * r['adapt_s']:7.1f} ms, query {1000 * r['query_s']:6.1f} ms, "
                f"predict_step {1000 * r['predict_step_s']:7.1f} ms",
                flush=True,
            )
    print()
    print(table(rows))
    setting = {
        "backbone": "Conv4(hidden=64), 1x28x28 inputs, random weights and images",
        "ways": WAYS,
        "queries": args.queries,
        "threads": torch.get_num_threads(),
    }
    save(
        "adaptation",
        {"lightning_meta": lightning_meta.__version__, "setting": setting, "repeats": args.repeats, "rows": rows},
    )


if __name__ == "__main__":
    main()
