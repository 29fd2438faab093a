"""Draw the documentation's figures into ``docs/img/`` (needs the ``docs`` extra, for matplotlib).

    python scripts/make_figures.py [--omniglot ../shared/data/omniglot] [--only curve,memory,episode]

* ``adaptation_curve.png``: query MSE against inner steps on sinusoid tasks, for a MAML-trained MLP and for
  one trained on the same tasks without adaptation. No result file holds such a curve, so the script trains
  both itself with the functional core (1,000 meta-steps on one thread, seeded: about 10 s on this project's
  2-core CPU machine) and evaluates them with ``query_trajectory``.
* ``maml_memory.png``: the memory one training step adds against inner steps, from
  ``benchmarks/results/maml.json`` (written by ``benchmarks/maml.py``).
* ``learners.png``: test accuracy against training time for every learner at an equal budget, from
  ``benchmarks/results/learners.json`` (written by ``benchmarks/learners.py``).
* ``omniglot_episode.png``: one 5-way 1-shot test episode as ``EpisodicDataModule`` yields it (a
  ``TaskBatch``), support and query images, from a local Omniglot copy (skipped, with a message, without one).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_meta import EpisodicDataModule, OmniglotTasks, SinusoidTasks  # noqa: E402
from lightning_meta.functional import TaskLoss, meta_objective, query_trajectory  # noqa: E402
from lightning_meta.models import MLP  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
PNG_META = {"Software": None}  # no matplotlib version in the file: reruns give the same bytes

# Sinusoid protocol of the MAML paper (K = 10, inner lr 0.01, meta-batch 25, Adam 1e-3), shortened.
SHOTS, INNER_LR, META_BATCH, META_STEPS, EVAL_TASKS, EVAL_STEPS = 10, 0.01, 25, 1000, 200, 10


def _save(fig: plt.Figure, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=110, bbox_inches="tight", metadata=PNG_META)
    plt.close(fig)
    print(f"wrote docs/img/{name}")


def _generators(start: int, count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(start + i) for i in range(count)]


def _train(tasks: SinusoidTasks, maml: bool) -> MLP:
    """``META_STEPS`` Adam steps on meta-batches of sinusoid tasks: the MAML meta-objective (1 inner step,
    second order), or with ``maml=False`` plain regression on all points of the tasks (the "pretrained"
    baseline of the MAML paper)."""
    torch.manual_seed(0)
    model = MLP()
    task_loss = TaskLoss(model, F.mse_loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(META_STEPS):
        batch = tasks.sample("train", _generators(step * META_BATCH, META_BATCH))
        if maml:
            loss = meta_objective(task_loss, dict(model.named_parameters()), batch, INNER_LR, 1,
                                  vectorize=True).loss
        else:
            loss = F.mse_loss(model(torch.cat([batch.support_x, batch.query_x], 1)),
                              torch.cat([batch.support_y, batch.query_y], 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def adaptation_curve() -> None:
    tasks = SinusoidTasks(shots=SHOTS, queries=SHOTS)
    test = tasks.sample("test", _generators(0, EVAL_TASKS))
    start = time.perf_counter()
    learners = {"MAML (1 inner step in training)": _train(tasks, maml=True),
                "trained without adaptation": _train(tasks, maml=False)}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (label, model), marker in zip(learners.items(), "os"):
        curve = query_trajectory(TaskLoss(model, F.mse_loss), dict(model.named_parameters()), test, INNER_LR,
                                 EVAL_STEPS)
        steps = sorted(curve)
        mean = torch.stack([curve[k][0].mean() for k in steps])
        ci = torch.stack([1.96 * curve[k][0].std() / math.sqrt(EVAL_TASKS) for k in steps])
        ax.plot(steps, mean, marker=marker, label=label)
        ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2)
        print(f"  {label}: query MSE {mean[0]:.3f} before adaptation, {mean[1]:.3f} after 1 step, "
              f"{mean[-1]:.3f} after {EVAL_STEPS}")
    ax.set_xlabel("inner gradient steps on the support set (K = 10)")
    ax.set_ylabel("query MSE (mean, 95% CI)")
    ax.set_title(f"Sinusoid regression, {EVAL_TASKS} test tasks ({META_STEPS} meta-steps of training)",
                 fontsize=10)
    ax.set_xticks(range(0, EVAL_STEPS + 1))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, "adaptation_curve.png")
    print(f"  trained and evaluated in {time.perf_counter() - start:.0f} s")


def memory() -> None:
    results = json.loads((ROOT / "benchmarks" / "results" / "maml.json").read_text())
    rows = results["memory"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"second_order": 'MAML, meta_gradient="second_order"', "hvp": 'MAML, meta_gradient="hvp"',
              "imaml": "IMAML (5 CG steps)"}
    for mode, marker in (("second_order", "o"), ("hvp", "s"), ("imaml", "^")):
        points = sorted((r["steps"], r["added_bytes"] / 2**20) for r in rows if r["mode"] == mode)
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=labels[mode])
        for steps, mib in points:
            below = mode == "imaml"  # its points sit on the hvp line: labels under them
            ax.annotate(f"{mib:.0f}", (steps, mib), textcoords="offset points", xytext=(0, -12 if below else 6),
                        ha="center", fontsize=8, color="tab:green" if below else "black")
    setting = results["setting"]
    ax.set_xlabel("inner steps")
    ax.set_ylabel("memory one training step adds (MiB)")
    ax.set_title(f"Conv-4, Omniglot {setting['ways']}-way {setting['shots']}-shot, "
                 f"meta-batch {setting['meta_batch']} (CPU)", fontsize=10)
    ax.set_xticks(sorted({r["steps"] for r in rows}))
    ax.set_ylim(-0.08 * max(r["added_bytes"] / 2**20 for r in rows), 1.12 * max(r["added_bytes"] / 2**20 for r in rows))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, "maml_memory.png")


def learners_over_time() -> None:
    path = ROOT / "benchmarks" / "results" / "learners.json"
    if not path.exists():
        print("skipped learners.png: run benchmarks/learners.py first")
        return
    results = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    for (name, r), marker in zip(results["results"].items(), "os^vD<>ph*XP"):
        curve = r["curve"]
        style = "--" if name.startswith("blackbox") else "-"  # black-box rows dashed: 10 colours repeat after 10 rows
        ax.plot([p["seconds"] for p in curve], [100 * p["acc"] for p in curve], marker=marker, linestyle=style,
                label=name)
    ax.axhline(20, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("training time (s, this machine's CPU; scoring time not counted)")
    ax.set_ylabel("test accuracy (%), 200 fixed episodes")
    ax.set_title(f"{results['setting']}: equal wall-clock budget ({results['budget_seconds']:.0f} s each)",
                 fontsize=10)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves fill the corners
    _save(fig, "learners.png")


def episode(omniglot: Path, ways: int = 5, shots: int = 1, queries_shown: int = 2) -> None:
    if not (omniglot / "images_background.zip").exists() and not (omniglot / "images_background").is_dir():
        print(f"skipped omniglot_episode.png: no Omniglot copy under {omniglot}")
        return
    dm = EpisodicDataModule(OmniglotTasks(str(omniglot), ways=ways, shots=shots, queries=15),
                            meta_batch_size=1, test_episodes=1)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))  # a TaskBatch with one task
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    fig, axes = plt.subplots(1 + queries_shown, ways, figsize=(1.1 * ways, 1.2 * (1 + queries_shown)))
    for label in range(ways):
        support = sx[sy == label]
        query = qx[qy == label][:queries_shown]
        for row, image in enumerate([support[0], *query]):
            ax = axes[row, label]
            ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("tab:blue" if row == 0 else "0.7")
                spine.set_linewidth(2 if row == 0 else 1)
            if row == 0:
                ax.set_title(f"label {label}", fontsize=9)
        axes[0, label].set_xlabel("support", fontsize=8, color="tab:blue")
    axes[1, 0].set_ylabel("query", fontsize=8)
    fig.suptitle(f"One {ways}-way {shots}-shot Omniglot test episode\n(28x28 px; {qx.shape[0]} queries, "
                 f"{queries_shown} per class shown)", fontsize=9)
    fig.tight_layout()
    _save(fig, "omniglot_episode.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omniglot", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--only", default="curve,memory,episode,learners",
                        help="comma-separated: curve, memory, episode, learners")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    torch.set_num_threads(1)  # small tensors: threads only add overhead (and the numbers stay the same anywhere)
    if "memory" in wanted:
        memory()
    if "episode" in wanted:
        episode(args.omniglot)
    if "learners" in wanted:
        learners_over_time()
    if "curve" in wanted:
        adaptation_curve()


if __name__ == "__main__":
    main()
