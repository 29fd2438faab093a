"""MAML with ResNet-12: second-order against first-order training tasks/s and the memory of one training step.

    python benchmarks/resnet12.py [--rounds 3] [--seconds 20] [--inner-steps 1] [--tiny]

Setting: 5-way 1-shot 15-query tasks of random 3x84x84 images (speed and memory do not depend on the pixels),
``ResNet12(out_features=5)`` (64-160-320-640, 12.4 M parameters, transductive BatchNorm, no DropBlock), meta-batch
2, inner lr 0.01, Adam 1e-3. Each measurement runs in a fresh process:

* training tasks/s: ``MAML.objective`` + backward + Adam step, ``meta_gradient`` second_order vs first_order,
  alternating round by round; the median per mode is reported.
* memory: CUDA ``max_memory_allocated`` during one training step after a reset, minus what was allocated before
  it; on CPU, peak RSS during the step minus RSS before it.

``--tiny`` (widths 8-16-32-64, 32x32 images, 2 queries, a second per round) only checks that the script runs;
it saves nothing. Otherwise prints a table and saves ``benchmarks/results/resnet12.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from common import save, step_memory

from lightning_meta import MAML, TaskBatch
from lightning_meta.models import ResNet12

WAYS, SHOTS, META_BATCH, INNER_LR = 5, 1, 2, 0.01
MODES = ("second_order", "first_order")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def setup(mode: str, cfg: dict) -> tuple[MAML, TaskBatch]:
    torch.manual_seed(0)
    net = ResNet12(out_features=WAYS, channels=cfg["channels"], image_size=cfg["image_size"])
    maml = MAML(net, inner_lr=INNER_LR, inner_steps=cfg["inner_steps"], meta_gradient=mode).to(DEVICE)
    side, queries = cfg["image_size"], cfg["queries"]
    x = torch.rand(META_BATCH, WAYS * (SHOTS + queries), 3, side, side, device=DEVICE)
    y = torch.arange(WAYS, device=DEVICE).repeat(META_BATCH, SHOTS + queries)
    n = WAYS * SHOTS
    return maml, TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def speed_child(mode: str, cfg: dict) -> None:
    """Run in a fresh process: training tasks/s of ``mode`` for ``cfg["seconds"]``, printed as JSON."""
    maml, batch = setup(mode, cfg)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        maml.objective(batch).loss.backward()
        opt.step()

    step()  # warm-up
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < cfg["seconds"] or done == 0:
        step()
        sync()
        done += META_BATCH
    print(json.dumps({"mode": mode, "tasks_per_s": done / (time.perf_counter() - start)}))


def memory_child(mode: str, cfg: dict) -> None:
    """Run in a fresh process: memory one training step adds, printed as JSON."""
    maml, batch = setup(mode, cfg)
    added = step_memory(lambda: maml.objective(batch).loss.backward(), DEVICE)
    print(json.dumps({"mode": mode, "added_bytes": int(added)}))


def child(kind: str, mode: str, cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, mode, json.dumps(cfg)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per mode and round")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a quick check that the script runs; saves nothing")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, mode, cfg = args.child
        (speed_child if kind == "speed" else memory_child)(mode, json.loads(cfg))
        return
    cfg = {"channels": [64, 160, 320, 640], "image_size": 84, "queries": 15, "inner_steps": args.inner_steps,
           "seconds": args.seconds}
    if args.tiny:
        cfg.update(channels=[8, 16, 32, 64], image_size=32, queries=2, seconds=min(args.seconds, 1.0))
    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            speeds[mode].append(child("speed", mode, cfg)["tasks_per_s"])
    memory = {mode: child("memory", mode, cfg)["added_bytes"] for mode in MODES}
    rows = [{"mode": mode, "tasks_per_s": statistics.median(speeds[mode]), "runs": speeds[mode],
             "step_memory_mib": memory[mode] / 2**20} for mode in MODES]
    print(f"ResNet12 {cfg['channels']} {cfg['image_size']}px, {WAYS}-way {SHOTS}-shot {cfg['queries']}-query, "
          f"meta-batch {META_BATCH}, {cfg['inner_steps']} inner step(s), {DEVICE}")
    print(f"{'meta_gradient':15s} {'tasks/s':>9s} {'step MiB':>9s}")
    for row in rows:
        print(f"{row['mode']:15s} {row['tasks_per_s']:9.2f} {row['step_memory_mib']:9.1f}")
    if not args.tiny:
        save("resnet12", {"setting": cfg, "rounds": args.rounds, "results": rows})


if __name__ == "__main__":
    main()
