"""MAML tasks/s and memory: lightning-meta's MAML beside learn2learn's, on the identical Conv-4.

    python benchmarks/maml.py [--rounds 3] [--steps 2] [--skip-memory | --memory-only]

Setting: Omniglot 5-way 1-shot 15-query, Conv-4 (64 filters, BatchNorm), meta-batch 32, 1 inner step
(inner lr 0.4), Adam 1e-3, on real Omniglot meta-batches. Contenders run alternately, round by round, and
the median per contender is reported:

* training tasks/s: ``MAML.objective`` (training_step's loss) + backward + Adam step for each ``meta_gradient``, against
  ``learn2learn.algorithms.MAML`` (clone/adapt per task, ``first_order`` False/True) on the same batches.
* evaluation episodes/s: our validation step (inner-loop gradients only, no outer graph), against
  learn2learn's ``LightningMAML.meta_learn`` (its validation step, which builds outer graphs).
* learn2learn again with our channels-last layout (model and inputs), so that the layout's share of the
  ratios shows; and the compute floors: the query forward + backward through per-task weights alone
  (training) and the query forward alone (evaluation), which any MAML step must do on top of its inner loop.
* memory added by one training step at 1, 5, 10 inner steps, second_order vs hvp, and implicit MAML (``IMAML``,
  5 CG steps) at 5, 20, 50 inner steps, each in a fresh process
  (CUDA: ``max_memory_allocated`` after a reset; CPU: peak RSS during the step minus RSS before it).

Prints tables and saves ``benchmarks/results/maml.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from common import omniglot_root, save, step_memory
from torch.func import functional_call

from lightning_meta import IMAML, MAML, EpisodicDataModule, OmniglotTasks, TaskBatch
from lightning_meta.data.layout import channels_last_batch, channels_last_tasks
from lightning_meta.models import Conv4

WAYS, SHOTS, QUERIES, META_BATCH, INNER_LR = 5, 1, 15, 32, 0.4
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batches(n: int) -> list[TaskBatch]:
    tasks = OmniglotTasks(str(omniglot_root()), ways=WAYS, shots=SHOTS, queries=QUERIES)
    dm = EpisodicDataModule(tasks, meta_batch_size=META_BATCH, train_episodes_per_epoch=META_BATCH * n)
    dm.setup("fit")
    return [TaskBatch(*(t.to(DEVICE) for t in b)) for b in dm.train_dataloader()]


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def ours_train(mode: str, **kwargs):
    torch.manual_seed(0)
    maml = MAML(Conv4(out_features=WAYS), inner_lr=INNER_LR, meta_gradient=mode, **kwargs).to(DEVICE)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)

    def step(batch: TaskBatch) -> None:
        opt.zero_grad()
        maml.objective(batch).loss.backward()  # what training_step returns, without Lightning's logging
        opt.step()

    return step


def l2l_train(first_order: bool, channels_last: bool = False):
    """learn2learn's MAML as its docs use it; ``channels_last=True`` gives it our memory layout too."""
    import learn2learn as l2l

    torch.manual_seed(0)
    maml = l2l.algorithms.MAML(conv4(channels_last), lr=INNER_LR, first_order=first_order)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    loss_fn = torch.nn.functional.cross_entropy

    def step(batch: TaskBatch) -> None:
        batch = channels_last_batch(batch) if channels_last else batch
        opt.zero_grad()
        total = 0.0
        for t in range(batch.num_tasks):
            learner = maml.clone()
            learner.adapt(loss_fn(learner(batch.support_x[t]), batch.support_y[t]))
            total = total + loss_fn(learner(batch.query_x[t]), batch.query_y[t])
        (total / batch.num_tasks).backward()
        opt.step()

    return step


def ours_eval(pre_adaptation_metrics: bool = True):
    torch.manual_seed(0)
    maml = MAML(Conv4(out_features=WAYS), inner_lr=INNER_LR, eval_inner_steps=1,
                pre_adaptation_metrics=pre_adaptation_metrics).to(DEVICE)
    maml.eval()
    at = {0, 1} if pre_adaptation_metrics else {1}  # what validation_step computes

    def step(batch: TaskBatch) -> None:
        with torch.no_grad():
            maml.query_trajectory(batch, at=at)

    return step


def l2l_eval(channels_last: bool = False):
    from learn2learn.algorithms import LightningMAML

    torch.manual_seed(0)
    module = LightningMAML(conv4(channels_last), adaptation_lr=INNER_LR, adaptation_steps=1)

    def step(batch: TaskBatch) -> None:
        for t in range(batch.num_tasks):
            data, labels = l2l_layout(batch, t)
            if channels_last:
                data = channels_last_tasks(data[None])[0]
            with torch.enable_grad():
                module.meta_learn((data, labels), 0, WAYS, SHOTS, QUERIES)

    return step


def conv4(channels_last: bool) -> torch.nn.Module:
    model = Conv4(out_features=WAYS).to(DEVICE)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def floor_train():
    """The query forward + backward through per-task weights alone: work every MAML step includes."""
    torch.manual_seed(0)
    model = conv4(channels_last=True)
    theta = dict(model.named_parameters())

    def step(batch: TaskBatch) -> None:
        batch = channels_last_batch(batch)
        for t in range(batch.num_tasks):
            phi = {n: p * 1.0 for n, p in theta.items()}  # per-task tensors, as the adapted weights are
            out = functional_call(model, phi, (batch.query_x[t],))
            torch.nn.functional.cross_entropy(out, batch.query_y[t]).backward()

    return step


def floor_eval():
    """The query forward alone (no gradients): work every evaluation episode includes."""
    torch.manual_seed(0)
    model = conv4(channels_last=True)

    def step(batch: TaskBatch) -> None:
        batch = channels_last_batch(batch)
        with torch.no_grad():
            for t in range(batch.num_tasks):
                model(batch.query_x[t])

    return step


def l2l_layout(batch: TaskBatch, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One task as learn2learn's (data, labels): per class, its shots then its queries."""
    xs, ys, xq, yq = batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
    data = torch.cat([torch.cat([xs[ys == c], xq[yq == c]]) for c in range(WAYS)])
    labels = torch.arange(WAYS, device=data.device).repeat_interleave(SHOTS + QUERIES)
    return data, labels


def race(contenders: dict, data: list[TaskBatch], rounds: int, steps: int) -> dict[str, float]:
    """Median tasks/s per contender, contenders alternating within each round."""
    for fn in contenders.values():  # warm-up
        fn(data[0])
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            sync()
            start = time.perf_counter()
            for i in range(steps):
                fn(data[(r * steps + i) % len(data)])
            sync()
            times[name].append(steps * META_BATCH / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}


def memory_child(mode: str, steps: int) -> None:
    """Run in a fresh process: memory one training step adds, printed as JSON."""
    torch.manual_seed(0)
    x = torch.rand(META_BATCH, WAYS * (SHOTS + QUERIES), 1, 28, 28, device=DEVICE)
    y = torch.arange(WAYS, device=DEVICE).repeat(META_BATCH, SHOTS + QUERIES)
    batch = TaskBatch(x[:, : WAYS * SHOTS], y[:, : WAYS * SHOTS], x[:, WAYS * SHOTS :], y[:, WAYS * SHOTS :])
    if mode == "imaml":  # implicit MAML: no unrolled graph, so memory should not grow with the inner steps
        maml = IMAML(Conv4(out_features=WAYS), inner_lr=0.1, inner_steps=steps, lam=2.0, cg_steps=5).to(DEVICE)
    else:
        maml = MAML(Conv4(out_features=WAYS), inner_lr=INNER_LR, inner_steps=steps, meta_gradient=mode).to(DEVICE)
    added = step_memory(lambda: maml.objective(batch).loss.backward(), DEVICE)
    print(json.dumps({"mode": mode, "steps": steps, "added_bytes": int(added)}))


def memory_table() -> list[dict]:
    rows = []
    for mode, counts in (("second_order", (1, 5, 10)), ("hvp", (1, 5, 10)), ("imaml", (5, 20, 50))):
        for steps in counts:
            out = subprocess.run([sys.executable, __file__, "--memory-child", mode, str(steps)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def memory_only() -> None:
    """Remeasure the memory rows and save them into the last saved run (its speed numbers kept)."""
    from common import RESULTS

    path = RESULTS / "maml.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved.pop("machine", None)
    saved["memory"] = memory_table()
    for row in saved["memory"]:
        print(f"{row['mode']:28s} {row['steps']:5d} {row['added_bytes'] / 2**20:9.1f}")
    save("maml", saved)


def previous_memory() -> list[dict]:
    """The memory rows of the last saved run (kept when ``--skip-memory``)."""
    from common import RESULTS

    path = RESULTS / "maml.json"
    return json.loads(path.read_text()).get("memory", []) if path.exists() else []


def ratios_to(train: dict[str, float], evals: dict[str, float], suffix: str) -> dict[str, float]:
    """Each contender's rate over learn2learn's (``suffix`` picks learn2learn's layout)."""
    out = {}
    for name, value in train.items():
        peer = "l2l_first_order" if "first_order" in name else "l2l_second_order"
        out[name] = value / train[peer + suffix]
    for name, value in evals.items():
        out[name] = value / evals["l2l_lightning_maml_eval" + suffix]
    return out


def l2l_available() -> bool:
    try:
        import learn2learn  # noqa: F401
    except ImportError:
        print("learn2learn is not importable: run `bash scripts/install_learn2learn.sh` for the comparison")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODE", "STEPS"))
    parser.add_argument("--memory-only", action="store_true", help="remeasure memory, keep the saved speed numbers")
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]))
    if args.memory_only:
        return memory_only()
    data = batches(max(4, args.rounds * args.steps))
    has_l2l = l2l_available()
    train = {f"ours_{m}": ours_train(m) for m in ("second_order", "first_order", "hvp")}
    train["ours_second_order_vmap"] = ours_train("second_order", vectorize=True)
    if has_l2l:
        train["l2l_second_order"], train["l2l_first_order"] = l2l_train(False), l2l_train(True)
        train["l2l_second_order_channels_last"] = l2l_train(False, channels_last=True)
        train["l2l_first_order_channels_last"] = l2l_train(True, channels_last=True)
    train["floor_query_forward_backward"] = floor_train()
    train_rates = race(train, data, args.rounds, args.steps)
    evals = {"ours_eval": ours_eval(), "ours_eval_post_only": ours_eval(False)}
    if has_l2l:
        evals["l2l_lightning_maml_eval"] = l2l_eval()
        evals["l2l_lightning_maml_eval_channels_last"] = l2l_eval(channels_last=True)
    evals["floor_query_forward"] = floor_eval()
    eval_rates = race(evals, data, args.rounds, args.steps)
    ratios = ratios_to(train_rates, eval_rates, "") if has_l2l else {}
    ratios_cl = ratios_to(train_rates, eval_rates, "_channels_last") if has_l2l else {}
    for title, unit, rates in (("training", "tasks/s", train_rates), ("evaluation", "eps/s", eval_rates)):
        print(f"\n{title:38s} {unit:>9s} {'x l2l':>7s} {'x l2l CL':>8s}")
        for name, value in rates.items():
            print(f"{name:38s} {value:9.1f} {ratios.get(name, float('nan')):7.2f} "
                  f"{ratios_cl.get(name, float('nan')):8.2f}")
    memory = previous_memory() if args.skip_memory else memory_table()
    if memory:
        print(f"\n{'memory added by one step':28s} {'steps':>5s} {'MiB':>9s}")
        for row in memory:
            print(f"{row['mode']:28s} {row['steps']:5d} {row['added_bytes'] / 2**20:9.1f}")
    save("maml", {"device": str(DEVICE), "setting": {"ways": WAYS, "shots": SHOTS, "queries": QUERIES,
                  "meta_batch": META_BATCH, "inner_steps": 1, "inner_lr": INNER_LR},
                  "train_tasks_per_s": train_rates, "eval_episodes_per_s": eval_rates,
                  "ratio_vs_learn2learn": ratios, "ratio_vs_learn2learn_channels_last": ratios_cl,
                  "memory": memory})


if __name__ == "__main__":
    main()
