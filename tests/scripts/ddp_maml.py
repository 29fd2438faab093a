"""MAML under a 2-process CPU strategy: saves the trained weights and the test metrics of rank 0.

usage: ddp_maml.py OUT_DIR STRATEGY META_BATCH STEPS MODE [ACCELERATOR]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maml_job import build, trainer  # noqa: E402

if __name__ == "__main__":
    out, strategy, meta_batch, steps, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    model, dm = build(meta_batch, mode)
    accelerator = sys.argv[6] if len(sys.argv) > 6 else "cpu"
    t = trainer(devices=2, strategy=strategy, max_steps=steps, accelerator=accelerator)
    t.fit(model, dm)
    metrics = t.test(model, dm, verbose=False)[0]
    if t.global_rank == 0:
        torch.save({"state": model.state_dict(), "test": metrics}, Path(out) / f"{strategy}.pt")
