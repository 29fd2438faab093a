"""Black-box adaptation beside MAML: speed per task on the same backbone and shapes, and calibration.

    python benchmarks/blackbox.py [--rounds 5] [--steps 2] [--calibration-steps 3000] [--skip-calibration]

Speed: Conv-4, Omniglot 5-way 1-shot 15-query meta-batches of 32 (the shapes of ``benchmarks/maml.py``), every
aggregator against ``MAML`` second-order (1 inner step, the paper's setting) in the same process, contenders
alternating within each round, median of ``--rounds``; an optimizer step is included. Training is tasks/s of
``objective(batch).loss.backward()``; evaluation is episodes/s of ``predict_step`` against MAML's evaluation with
one inner step (its cheapest) and with three (the paper's Omniglot setting, as in ``benchmarks/learners.py``).
Also measured: the encoder pass (tasks per pass, channels-last) that ``encoder_tasks="auto"`` picks, and the
black-box layout as shipped before (NCHW, the whole meta-batch in one pass).

Calibration: ``BlackBoxAdaptation(predict_variance=True)`` on sinusoids (10 shots, 10 queries), trained for
``--calibration-steps`` steps, then 600 fixed test tasks: MSE of the mean and the fraction of query targets inside
the central predicted intervals (50 % ... 99 %); a calibrated model's fractions equal the levels.

Accuracy at equal training time is ``benchmarks/learners.py`` (every learner, black-box aggregators included).
Saves ``benchmarks/results/blackbox.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import pytorch_lightning as pl
import torch
from common import save
from maml import DEVICE, META_BATCH, WAYS, batches, ours_eval, ours_train, race

from lightning_meta import MAML, BlackBoxAdaptation, EpisodicDataModule, SinusoidTasks, TaskBatch
from lightning_meta.models import MLP, Conv4

AGGREGATORS = ("mean", "attention", "sequence", "snail")
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


def blackbox(aggregator: str, **kwargs) -> BlackBoxAdaptation:
    torch.manual_seed(0)
    return BlackBoxAdaptation(Conv4(embed_only=True), aggregator=aggregator, ways=WAYS, task_dim=64, hidden=128,
                              **kwargs).to(DEVICE)


def bb_train(aggregator: str, **kwargs):
    model = blackbox(aggregator, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch: TaskBatch) -> None:
        opt.zero_grad()
        model.objective(batch).loss.backward()
        opt.step()

    return step


def bb_eval(aggregator: str, **kwargs):
    model = blackbox(aggregator, **kwargs).eval()

    def step(batch: TaskBatch) -> None:
        with torch.no_grad():
            model.predict_step(batch, 0)

    return step


def maml_eval(inner_steps: int):
    """MAML's evaluation as the paper's Omniglot setting runs it (3 inner steps; ``benchmarks/learners.py``)."""
    torch.manual_seed(0)
    maml = MAML(Conv4(out_features=WAYS), inner_lr=0.4, eval_inner_steps=inner_steps).to(DEVICE).eval()

    def step(batch: TaskBatch) -> None:
        with torch.no_grad():
            maml.query_trajectory(batch, at={inner_steps})

    return step


def speed(rounds: int, steps: int) -> dict:
    data = batches(8)
    train = {"maml_second_order": ours_train("second_order")}
    train |= {f"blackbox_{a}": bb_train(a) for a in AGGREGATORS}
    for per_pass in (2, 4, "all"):  # what "auto" (1 task per pass on CPU) was chosen against
        train[f"blackbox_attention_tasks_per_pass_{per_pass}"] = bb_train("attention", encoder_tasks=per_pass)
    train["blackbox_attention_as_before"] = bb_train("attention", channels_last=False, encoder_tasks="all")
    evals = {"maml_1_inner_step": ours_eval(False), "maml_3_inner_steps": maml_eval(3)}
    evals |= {f"blackbox_{a}": bb_eval(a) for a in AGGREGATORS}
    evals["blackbox_attention_as_before"] = bb_eval("attention", channels_last=False, encoder_tasks="all")
    out = {}
    for kind, ratio, contenders in (("train_tasks_per_s", "train_x_maml", train),
                                    ("eval_episodes_per_s", "eval_x_maml", evals)):
        rates = race(contenders, data, rounds, steps)
        base = next(iter(rates.values()))
        out[kind], out[ratio] = rates, {k: v / base for k, v in rates.items()}
        print(f"\n{kind}")
        for name, value in rates.items():
            print(f"  {name:45s} {value:8.1f}  x{value / base:.2f} MAML")
    out["snail_stack_share"] = snail_share(data[0])
    return out


def snail_share(batch: TaskBatch) -> dict:
    """Time of the SNAIL stack's forward and backward alone against the whole SNAIL learner's training step."""
    model = blackbox("snail")
    width = model.snail.layers[0].key.in_features
    support = torch.randn(META_BATCH, batch.support_x.shape[1], width, device=DEVICE, requires_grad=True)
    queries = torch.randn(META_BATCH, batch.query_x.shape[1], width, device=DEVICE, requires_grad=True)

    def stack() -> None:
        s, q = model.snail(support, queries)
        (s.sum() + q.sum()).backward()

    def whole() -> None:
        model.objective(batch).loss.backward()

    timings = {}
    for name, fn in (("stack", stack), ("whole", whole)):
        fn()
        start = time.perf_counter()
        for _ in range(3):
            fn()
        timings[name] = (time.perf_counter() - start) / 3
    print(f"\nSNAIL stack: {timings['stack']:.3f} s of a {timings['whole']:.3f} s training step "
          f"({100 * timings['stack'] / timings['whole']:.0f} %)")
    return {"stack_seconds": timings["stack"], "step_seconds": timings["whole"],
            "share": timings["stack"] / timings["whole"]}


def calibration(steps: int) -> dict:
    torch.manual_seed(0)
    model = BlackBoxAdaptation(MLP(out_features=64, hidden=(64,)), feature_dim=64, aggregator="attention",
                               task_dim=32, hidden=64, predict_variance=True,
                               optimizer=partial(torch.optim.Adam, lr=1e-3))
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25,
                            train_episodes_per_epoch=25 * steps, val_episodes=0, test_episodes=600,
                            eval_meta_batch_size=100, seed=0)
    pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(model, dm)
    dm.setup("test")
    model.eval()
    means, variances, targets = [], [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            mean, var = model.predictive(batch)
            means.append(mean)
            variances.append(var)
            targets.append(batch.query_y)
    mean, var, target = torch.cat(means), torch.cat(variances), torch.cat(targets)
    z = (target - mean).abs() / var.sqrt()
    coverage = {f"{level:.2f}": float((z <= normal_quantile(level)).float().mean()) for level in LEVELS}
    per_task = ((target - mean) ** 2).flatten(1).mean(1)
    result = {"steps": steps, "test_tasks": len(per_task), "mse": float(per_task.mean()),
              "mse_ci95": float(1.96 * per_task.std() / math.sqrt(len(per_task))), "coverage": coverage,
              "mean_predicted_std": float(var.sqrt().mean())}
    print(f"\ncalibration after {steps} steps on {len(per_task)} test tasks: MSE {result['mse']:.3f} "
          f"+- {result['mse_ci95']:.3f}; inside the central interval: "
          + ", ".join(f"{float(k):.0%} -> {v:.3f}" for k, v in coverage.items()))
    return result


def normal_quantile(level: float) -> float:
    """``z`` with ``P(|N(0, 1)| <= z) = level``."""
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--calibration-steps", type=int, default=3000)
    parser.add_argument("--skip-calibration", action="store_true")
    args = parser.parse_args()
    result = {"device": str(DEVICE), "setting": "Conv-4, Omniglot 5-way 1-shot 15-query, meta-batch 32",
              "speed": speed(args.rounds, args.steps)}
    if not args.skip_calibration:
        result["calibration"] = calibration(args.calibration_steps)
    save("blackbox", result)


if __name__ == "__main__":
    main()
