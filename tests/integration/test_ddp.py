"""Real multi-process DDP on CPU (gloo), against one-device oracles.

Each launch runs a script of ``tests/scripts`` in fresh interpreters (Lightning's ``ddp`` re-executes the
script per rank, ``ddp_spawn`` spawns its ranks, the multi-node test starts two "nodes" on 127.0.0.1) with a
port of its own (``conftest.reserved_port``). The oracle is one device with the doubled meta-batch on the same
tasks: the ranks' meta-batches of the training stream are, together, the one device's meta-batch, so the
weights after 3 SGD steps agree to float32 rounding, and the validation/test episodes are one fixed set that
the ranks shard (here unevenly: odd set sizes), so the synced metrics and adaptation curves agree too.

Launches are slow on 2 cores; each test combines its checks into as few as it can.
``scripts/stress_ddp.sh N`` runs these tests N times and counts failures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from blackbox_job import build as build_blackbox
from conftest import REPO, failure_report, launch_nodes, run_script
from ddp_job import CURVE_STEPS, SaveResults, build, fit_trainer, load_ranks
from maml_job import PoisonedMAML, trainer
from maml_job import build as build_maml

MAML_MODES = ("second_order", "first_order", "hvp")
#: an abort of a ``ddp_spawn`` rank at interpreter exit, upstream (torch 2.13 + Python 3.11, see
#: docs/howto/ddp.md): a gloo worker thread frees the last backward's all-reduce work, whose saved thread-local
#: state holds a Python object, and takes the GIL while the rank's interpreter is finalizing


def assert_same_weights(expected: dict, actual: dict, tol: float = 1e-6) -> None:
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


def assert_same_metrics(expected: dict, actual: dict, stage: str) -> None:
    keys = sorted(k for k in expected if k.startswith(f"{stage}/"))
    assert keys and keys == sorted(k for k in actual if k.startswith(f"{stage}/")), (expected, actual)
    for key in keys:
        assert actual[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def assert_same_curve(expected: dict, actual: dict) -> None:
    assert actual["step"] == expected["step"] == list(range(CURVE_STEPS + 1))
    assert actual["score_name"] == expected["score_name"]
    for key in ("loss", "score"):
        assert actual[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


class Oracle:
    """One device, meta-batch 8: fit 3 steps (weights, train tasks), then validate and test with ``weights``
    (the ranks' trained weights: metrics compare the evaluation alone, over the same episodes)."""

    def __init__(self, learner: str, mode: str = "second_order") -> None:
        self.model, self.dm = build(learner, 8, mode)
        record = SaveResults(None, "oracle")  # the train task keys only
        fit_trainer(devices=1, callbacks=[record]).fit(self.model, self.dm)
        self.state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.train_tasks = record.train_tasks

    def evaluate(self, weights: dict) -> dict:
        self.model.load_state_dict(weights)
        t = trainer(devices=1)
        val = t.validate(self.model, self.dm, verbose=False)[0]
        curves = dict(self.model.adaptation_curves)
        test = t.test(self.model, self.dm, verbose=False)[0]
        curves.update(self.model.adaptation_curves)
        return {"val": val, "test": test, "curves": curves}


def assert_ranks_equal_oracle(out: Path, tag: str, oracle: Oracle, curves: bool = True) -> None:
    """Both ranks: the oracle's weights (and each other's, exactly), its train tasks between them (none on two
    ranks), its val/test metrics and adaptation curves for the same weights (synced: the same on both ranks)."""
    fit, test = load_ranks(out, tag, "fit"), load_ranks(out, tag, "test")
    for rank in (0, 1):
        assert fit[rank]["world_size"] == 2 and fit[rank]["global_rank"] == rank and fit[rank]["global_step"] == 3
        assert_same_weights(oracle.state, {k: v for k, v in fit[rank]["state"].items() if k in oracle.state})
        assert_same_weights(fit[0]["state"], fit[rank]["state"], tol=0)
    tasks = [fit[rank]["train_tasks"] for rank in (0, 1)]
    assert len(tasks[0]) == len(tasks[1]) == 12 and not set(tasks[0]) & set(tasks[1])
    assert sorted(tasks[0] + tasks[1]) == sorted(oracle.train_tasks)
    one = oracle.evaluate(fit[0]["state"])
    for rank in (0, 1):
        assert_same_metrics(one["val"], fit[rank]["val"], "val")
        assert_same_metrics(one["test"], test[rank]["test"], "test")
        if curves:
            assert_same_curve(one["curves"]["val"], fit[rank]["curves"]["val"])
            assert_same_curve(one["curves"]["test"], test[rank]["curves"]["test"])


def test_maml_two_ranks_equal_one_device_for_every_meta_gradient(tmp_path):
    """``ddp``, strict: second-order, first-order and HVP meta-gradients, synced val/test metrics over odd
    (uneven) shards, the adaptation curves' cross-rank reduce; and black-box adaptation the same way."""
    jobs = [f"maml:{mode}" for mode in MAML_MODES] + ["blackbox"]
    run_script("ddp_learners.py", str(tmp_path), "ddp", ",".join(jobs), timeout=600)
    for mode in MAML_MODES:
        assert_ranks_equal_oracle(tmp_path, f"maml-{mode}", Oracle("maml", mode))
    assert_ranks_equal_oracle(tmp_path, "blackbox", Oracle("blackbox"), curves=False)


def test_reptile_imaml_protonet_and_maml_plus_plus_two_ranks_equal_one_device(tmp_path):
    """``ddp``, strict, as for MAML: the meta-gradients these learners hand to Lightning as gradients are averaged
    over the ranks' tasks like MAML's, and their synced metrics and curves equal one device's. MAML++'s per-step
    BatchNorm running statistics are per rank (DDP broadcasts rank 0's buffers; normalization uses batch
    statistics, so weights and metrics still agree): they are left out of the comparison."""
    learners = ("reptile", "imaml", "protonet", "maml_pp")
    run_script("ddp_learners.py", str(tmp_path), "ddp", ",".join(learners), timeout=600)
    for learner in learners:
        oracle = Oracle(learner)
        initial = build(learner, 8)[0].state_dict()
        moved = max(float((v - initial[k]).abs().max()) for k, v in oracle.state.items())
        assert moved > 1e-3, f"{learner} barely trained ({moved:g}): the comparison would prove little"
        if learner == "maml_pp":
            oracle.state = {k: v for k, v in oracle.state.items() if "running_" not in k}
        assert_ranks_equal_oracle(tmp_path, learner, oracle, curves=learner != "protonet")


def test_maml_ddp_spawn_equals_one_device(tmp_path):
    """``ddp_spawn``: fit and test (one launch each: every trainer call spawns its ranks) give the one-device
    weights, metrics and curves, and every launch exits 0 (no rank aborts at interpreter exit: the learners'
    teardown barrier, lightning_meta.distributed; docs/howto/ddp.md)."""
    for phase in ("fit", "test"):
        run_script("ddp_learners.py", str(tmp_path), "ddp_spawn", "maml:second_order", phase)
        assert all((tmp_path / f"maml-second_order-{phase}.rank{r}.pt").exists() for r in (0, 1))
    assert_ranks_equal_oracle(tmp_path, "maml-second_order", Oracle("maml", "second_order"))


def test_maml_ddp_ranks_agree_on_a_non_finite_loss_seen_by_one_rank(tmp_path):
    """Rank 1 alone sees NaN at step 1: with "skip" both ranks skip it (as one device skips the whole
    meta-batch) and training goes on; with "raise" both ranks raise, rank 0 naming rank 1, and nobody hangs."""
    run_script("ddp_nonfinite.py", str(tmp_path), "skip", timeout=180)
    saved = torch.load(tmp_path / "nonfinite.pt", weights_only=False)
    model, dm = build_maml(8, model_cls=PoisonedMAML, nonfinite="skip")
    trainer(devices=1, max_steps=3).fit(model, dm)
    assert_same_weights(model.state_dict(), saved["state"])
    assert not torch.allclose(model.model.head.weight, build_maml(8)[0].model.head.weight)  # the others moved it
    failed = run_script("ddp_nonfinite.py", str(tmp_path), "raise", timeout=180, check=False)
    assert failed.returncode != 0
    assert "FloatingPointError: MAML: non-finite loss at inner step 0 of task 0 on rank 1" in failed.stderr
    assert "FloatingPointError: MAML: non-finite loss at rank(s) [1] (this rank, 0, was finite)" in failed.stderr


def test_blackbox_non_finite_loss_raises_on_every_ddp_rank(tmp_path):
    """Rank 1 alone sees NaN targets: both ranks raise (none waits in the all-reduce); one device raises too."""
    failed = run_script("ddp_blackbox.py", str(tmp_path), "poison", timeout=180, check=False)
    assert failed.returncode != 0
    assert failed.stderr.count("BlackBoxAdaptation: non-finite loss on rank(s) [1] at global step 1") >= 2
    model, dm = build_blackbox(4, poison_rank=0)
    with pytest.raises(FloatingPointError, match="non-finite loss at global step 1"):
        trainer(devices=1, max_steps=3).fit(model, dm)


def run_nodes(script: str, out: Path, nodes: int = 2, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``nodes`` launches of ``tests/scripts/SCRIPT OUT`` at once on 127.0.0.1 (conftest.launch_nodes)."""
    return launch_nodes([sys.executable, str(REPO / "tests" / "scripts" / script), str(out)], out, nodes, timeout)


def test_two_nodes_on_loopback_equal_one_device(tmp_path):
    """``num_nodes=2, devices=1``: two launches with NODE_RANK 0/1 on 127.0.0.1 give the one-device weights
    (3 steps of sinusoid MAML, meta-batch 4 per node vs 8), its val/test metrics and curves; the nodes' training
    tasks are disjoint and together the one device's."""
    for node, proc in enumerate(run_nodes("ddp_multinode.py", tmp_path)):
        assert proc.returncode == 0, failure_report(f"ddp_multinode.py (node {node})", proc)
    fit = load_ranks(tmp_path, "multinode", "fit")
    assert [(r["node_rank"], r["local_rank"], r["global_rank"]) for r in fit] == [(0, 0, 0), (1, 0, 1)]
    assert fit[0]["pid"] != fit[1]["pid"]
    assert_ranks_equal_oracle(tmp_path, "multinode", Oracle("maml", "second_order"))
