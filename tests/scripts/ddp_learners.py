"""Learners on 2 processes of one machine (``ddp`` or ``ddp_spawn``, CPU): for each job, fit 3 steps of
meta-batch 4 per rank (validating after the last step), then test. Every rank writes its results with
``ddp_job.SaveResults`` to OUT/{job}-{stage}.rank{r}.pt, before any rank may leave the call.

usage: ddp_learners.py OUT_DIR STRATEGY JOBS [PHASES]

JOBS: comma-separated ``maml:second_order``, ``maml:first_order``, ``maml:hvp``, ``blackbox``, ``reptile``,
``imaml``, ``protonet``.
PHASES: ``fit,test`` (default), ``fit`` or ``test``; ``test`` alone loads the weights a ``fit`` launch wrote
(one trainer call per launch: under ``ddp_spawn`` every call spawns its own ranks).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_job import SaveResults, build, fit_trainer, load_ranks  # noqa: E402
from maml_job import trainer  # noqa: E402

if __name__ == "__main__":
    out, strategy, jobs = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    phases = (sys.argv[4] if len(sys.argv) > 4 else "fit,test").split(",")
    common = dict(devices=2, strategy=strategy, accelerator="cpu")
    for job in jobs:
        learner, _, mode = job.partition(":")
        model, dm = build(learner, 4, mode or "second_order")
        tag = job.replace(":", "-")
        if "fit" in phases:
            fit_trainer(callbacks=[SaveResults(out, tag)], **common).fit(model, dm)
        else:
            model.load_state_dict(load_ranks(out, tag, "fit")[0]["state"])
        if "test" in phases:
            trainer(callbacks=[SaveResults(out, tag)], **common).test(model, dm, verbose=False)
