"""Every learner on Omniglot 5-way 1-shot at the same wall-clock budget, with the published numbers beside them.

    python benchmarks/learners.py [--budget 120] [--points 3] [--only maml_second_order,protonet]

``--only`` reruns some rows and merges them into the saved table (each row records its run's time).

Each learner trains for ``--budget`` seconds (``Trainer(max_time=...)``) on the Vinyals split, one after the
other in this process, on the same task stream; it is tested on 200 fixed episodes at each of ``--points``
equally spaced moments of training time (scoring time not counted) and on the 600 fixed test episodes (95% CI)
at the end. The published numbers are
full-budget results (tens of thousands of steps, often on a GPU): they say where a learner ends up, not where it
is after a few minutes on 2 CPU cores. Saves ``benchmarks/results/learners.json``; ``report.py`` renders the
table and ``scripts/make_figures.py`` the plot (test accuracy against training time).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import pytorch_lightning as pl
import torch
from common import RESULTS, omniglot_root, save

from lightning_meta import IMAML, MAML, BlackBoxAdaptation, EpisodicDataModule, OmniglotTasks, ProtoNet, Reptile
from lightning_meta.algorithms.blackbox import AGGREGATORS
from lightning_meta.models import Conv4

#: published Omniglot 5-way 1-shot accuracy (%) and its source; full training budgets
PUBLISHED = {
    "maml_second_order": (98.7, "Finn et al. 2017"),
    "maml_first_order": (98.3, "Finn et al. 2017"),
    "anil": (None, "Raghu et al. 2020 report no Omniglot 5-way 1-shot number"),
    "maml_plus_plus": (99.47, "Antoniou et al. 2019 (all options)"),
    "imaml": (99.16, "Rajeswaran et al. 2019 (GD)"),
    "reptile": (97.68, "Nichol et al. 2018 (transductive)"),
    "protonet": (98.8, "Snell et al. 2017"),
    "blackbox_mean": (None, "no published Omniglot number for a CNP-style mean aggregator"),
    "blackbox_attention": (None, "no published Omniglot number for this attention aggregator"),
    "blackbox_sequence": (82.8, "MANN (Santoro et al. 2016, in Finn et al. 2017's table; no conv encoder)"),
    "blackbox_snail": (99.07, "SNAIL, Mishra et al. 2018"),
}


def conv4() -> Conv4:
    return Conv4(out_features=5)


def learners() -> dict:
    """name -> (build the model, meta-batch size, train ways)."""
    return {
        "maml_second_order": (lambda: MAML(conv4(), inner_lr=0.4, eval_inner_steps=3), 32, 5),
        "maml_first_order": (lambda: MAML(conv4(), inner_lr=0.4, eval_inner_steps=3, meta_gradient="first_order"),
                             32, 5),
        "anil": (lambda: MAML(conv4(), inner_lr=0.4, inner_steps=5, eval_inner_steps=10, adapt="head"), 32, 5),
        "maml_plus_plus": (lambda: MAML(conv4(), inner_lr=0.1, inner_steps=5, learn_inner_lr="per_step",
                                        multi_step_loss=True, multi_step_loss_epochs=10, first_order_epochs=5,
                                        batch_norm="per_step"), 8, 5),
        "imaml": (lambda: IMAML(conv4(), inner_lr=0.1, inner_steps=16, lam=2.0, cg_steps=5), 32, 5),
        "reptile": (lambda: Reptile(conv4(), inner_lr=0.001, inner_steps=5, eval_inner_steps=50), 5, 5),
        "protonet": (lambda: ProtoNet(Conv4(embed_only=True)), 1, 60),
        **{f"blackbox_{aggregator}": (partial(blackbox, aggregator), 8, 5) for aggregator in AGGREGATORS},
    }


#: Adam's lr per black-box aggregator: from 4,000-task runs at meta-batch 8 (one seed each, docs/learners.md);
#: attention: 1e-3 (68 %) over 3e-3 (66 %) and 3e-4 (58 %); snail: 3e-4 (76 %) over 1e-3 (37 %), 1e-4 and 3e-3
#: (chance); mean and sequence were not tuned (1e-3)
BLACKBOX_LR = {"mean": 1e-3, "attention": 1e-3, "sequence": 1e-3, "snail": 3e-4}


def blackbox(aggregator: str) -> BlackBoxAdaptation:
    """Black-box adaptation as ``examples/configs/blackbox_omniglot.yaml`` builds it, meta-batch 8 (more steps in the
    budget than 32: black-box learners need many small steps early on)."""
    return BlackBoxAdaptation(Conv4(embed_only=True), aggregator=aggregator, ways=5, task_dim=64, hidden=128,
                              optimizer=partial(torch.optim.Adam, lr=BLACKBOX_LR[aggregator]))


def datamodule(meta_batch: int, train_ways: int, test_episodes: int) -> EpisodicDataModule:
    tasks = OmniglotTasks(str(omniglot_root()), ways=5, train_ways=train_ways, shots=1, queries=15)
    # an "epoch" is 500 steps (MAML++'s annealing schedules count epochs)
    return EpisodicDataModule(tasks, meta_batch_size=meta_batch, train_episodes_per_epoch=500 * meta_batch,
                              val_episodes=0, test_episodes=test_episodes, eval_meta_batch_size=50, seed=0)


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, **kwargs)


class Budget(pl.Callback):
    """Stops training after ``budget`` seconds of training time, and at ``points`` equally spaced moments scores the
    model on ``probe`` meta-batches through its ``predict_step`` (the time spent scoring is not counted)."""

    def __init__(self, budget: float, points: int, probe: list) -> None:
        self.budget, self.marks, self.probe = budget, [budget * (i + 1) / points for i in range(points)], probe
        self.trained, self.curve, self._start = 0.0, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.trained += time.perf_counter() - self._start
        if self.marks and self.trained >= self.marks[0]:
            self.marks.pop(0)
            self.curve.append({"seconds": self.trained, "steps": trainer.global_step, "acc": self.score(module)})
            print(f"  {self.trained:6.0f} s, {trainer.global_step:5d} steps, acc {self.curve[-1]['acc']:.3f}",
                  flush=True)
        if self.trained >= self.budget:
            trainer.should_stop = True

    def score(self, module) -> float:
        module.eval()
        hits = total = 0
        for batch in self.probe:
            logits = module.predict_step(batch, 0)[..., :5]
            hits += int((logits.argmax(-1) == batch.query_y).sum())
            total += batch.query_y.numel()
        module.train()
        return hits / total


def run(name: str, build, meta_batch: int, train_ways: int, budget: float, points: int) -> dict:
    print(name, flush=True)
    torch.manual_seed(0)
    model, dm = build(), datamodule(meta_batch, train_ways, 600)
    probe_dm = datamodule(meta_batch, train_ways, 200)
    probe_dm.setup("test")
    timer = Budget(budget, points, list(probe_dm.test_dataloader()))
    trainer = quiet_trainer(max_epochs=10**6, callbacks=[timer])
    trainer.fit(model, dm)
    result = quiet_trainer().test(model, dm, verbose=False)[0]
    published, source = PUBLISHED[name]
    return {"steps": trainer.global_step, "seconds": timer.trained,
            "tasks_per_s": trainer.global_step * meta_batch / timer.trained, "acc": result["test/acc"],
            "acc_ci95": result["test/acc_ci95"], "curve": timer.curve, "published": published, "source": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    chosen = {k: v for k, v in learners().items() if not args.only or k in args.only.split(",")}
    results = {name: run(name, *spec, args.budget, args.points) for name, spec in chosen.items()}
    print(f"\n{'learner':22s} {'tasks/s':>8s} {'steps':>6s} {'test acc (600)':>16s} {'published':>10s}")
    for name, r in results.items():
        published = "n/a" if r["published"] is None else f"{r['published']:.2f}"
        print(f"{name:22s} {r['tasks_per_s']:8.1f} {r['steps']:6d} {100 * r['acc']:8.2f} +- {100 * r['acc_ci95']:4.2f}"
              f" {published:>10s}")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for r in results.values():
        r["run"] = stamp
    saved = RESULTS / "learners.json"
    previous = json.loads(saved.read_text()) if args.only and saved.exists() else {}
    if previous and previous.get("budget_seconds") != args.budget:
        raise SystemExit(f"--only merges into learners.json, whose budget is {previous['budget_seconds']} s; "
                         f"run with --budget {previous['budget_seconds']} or without --only")
    merged = {**previous.get("results", {}), **results}  # --only reruns some rows; the others keep their run
    save("learners", {"budget_seconds": args.budget, "setting": "Omniglot 5-way 1-shot, Vinyals split, Conv-4",
                      "results": {name: merged[name] for name in learners() if name in merged}})


if __name__ == "__main__":
    main()
