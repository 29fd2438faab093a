"""Black-box adaptation on 2 CPU ranks (meta-batch 4 each); saves the weights to OUT/ddp.pt."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blackbox_job import build, trainer  # noqa: E402

if __name__ == "__main__":
    model, dm = build(4)
    t = trainer(devices=2, strategy="ddp", max_steps=3)
    t.fit(model, dm)
    if t.global_rank == 0:
        torch.save(model.state_dict(), Path(sys.argv[1]) / "ddp.pt")
