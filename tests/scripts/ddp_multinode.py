"""One "node" of a 2-node CPU DDP run (``num_nodes=2, devices=1, strategy="ddp"``): launch it twice, on one
machine or two, with the environment of Lightning's general-purpose cluster (no scheduler):

    MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port> WORLD_SIZE=2 NODE_RANK=0 python ddp_multinode.py OUT
    MASTER_ADDR=127.0.0.1 MASTER_PORT=<free port> WORLD_SIZE=2 NODE_RANK=1 python ddp_multinode.py OUT

MAML (second order, meta-batch 4 per node) fits 3 steps, validating after the last one, then tests; each rank
writes OUT/multinode-{stage}.rank{r}.pt (weights, synced metrics, adaptation curves, the training tasks it saw).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_job import SaveResults, build, fit_trainer  # noqa: E402
from maml_job import trainer  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1]
    model, dm = build("maml", 4, "second_order")
    common = dict(num_nodes=2, devices=1, strategy="ddp", accelerator="cpu")
    fit_trainer(callbacks=[SaveResults(out, "multinode")], **common).fit(model, dm)
    trainer(callbacks=[SaveResults(out, "multinode")], **common).test(model, dm, verbose=False)
