"""2-rank CPU DDP MAML where rank 1 alone sees a NaN support set at step 1; saves rank 0's weights.

usage: ddp_nonfinite.py OUT_DIR NONFINITE   (NONFINITE: skip | raise)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maml_job import PoisonedMAML, build, trainer  # noqa: E402

if __name__ == "__main__":
    out, nonfinite = sys.argv[1], sys.argv[2]
    PoisonedMAML.poison_rank = 1
    model, dm = build(4, model_cls=PoisonedMAML, nonfinite=nonfinite)
    t = trainer(devices=2, strategy="ddp", max_steps=3)
    t.fit(model, dm)
    if t.global_rank == 0:
        torch.save({"state": model.state_dict(), "global_step": t.global_step}, Path(out) / "nonfinite.pt")
