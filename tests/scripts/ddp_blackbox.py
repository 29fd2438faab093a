"""Black-box adaptation on 2 CPU ranks (meta-batch 4 each); saves the weights to OUT/ddp.pt.

usage: ddp_blackbox.py OUT_DIR [poison]   (poison: rank 1 alone sees NaN query targets at step 1)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blackbox_job import build, trainer  # noqa: E402

if __name__ == "__main__":
    model, dm = build(4, poison_rank=1 if sys.argv[2:] == ["poison"] else None)
    t = trainer(devices=2, strategy="ddp", max_steps=3)
    t.fit(model, dm)
    if t.global_rank == 0:
        torch.save(model.state_dict(), Path(sys.argv[1]) / "ddp.pt")
