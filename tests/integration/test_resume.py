"""Resume after a real ``kill -9`` continues exactly: resumed weights == uninterrupted weights, bitwise on CPU.

Each case runs ``tests/scripts/resume_job.py`` (Adam, ``accumulate_grad_batches=2``, validation inside and at
the end of epochs, a checkpoint after every optimizer step) in its own process group, SIGKILLs the group
(ranks and DataLoader workers) right after a chosen step's checkpoint, resumes from ``last.ckpt`` in a new
process, and compares with an uninterrupted run of the same job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, reserved_port, script_env

SCRIPT = REPO / "tests" / "scripts" / "resume_job.py"
MAX_STEPS = 13  # 5 optimizer steps per epoch: epochs 0, 1 and part of 2
MID_EPOCH, EPOCH_END = 7, 10


def job(out, learner, workers, devices, *extra, expect_kill=False, timeout=300):
    command = [sys.executable, str(SCRIPT), str(out), learner, str(workers), str(devices), str(MAX_STEPS), *extra]
    with reserved_port() as port:  # the suite's MASTER_PORT reservation: no race for the rendezvous port
        env = script_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              start_new_session=True)
    expected = -signal.SIGKILL if expect_kill else 0
    assert proc.returncode == expected, f"exit {proc.returncode}, expected {expected}:\n{proc.stderr[-4000:]}"
    return proc


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max diff {(a[name] - b[name]).abs().max()}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final weights of the uninterrupted job per (learner, devices), with 2 DataLoader workers."""
    cache = {}

    def get(learner: str, devices: int) -> dict:
        if (learner, devices) not in cache:
            out = tmp_path_factory.mktemp(f"full-{learner}-{devices}")
            job(out, learner, 2, devices)
            cache[learner, devices] = torch.load(out / "final.pt")
        return cache[learner, devices]

    return get


CASES = [  # learner, num_workers, devices, kill after step
    ("maml", 0, 1, MID_EPOCH),
    ("maml", 2, 1, EPOCH_END),
    ("blackbox", 2, 1, MID_EPOCH),
    ("maml", 2, 2, MID_EPOCH),
    ("blackbox", 2, 2, EPOCH_END),
]


@pytest.mark.parametrize(("learner", "workers", "devices", "kill_at"), CASES,
                         ids=[f"{c[0]}-workers{c[1]}-devices{c[2]}-step{c[3]}" for c in CASES])
def test_resume_after_kill_9_equals_uninterrupted(tmp_path, uninterrupted, learner, workers, devices, kill_at):
    job(tmp_path, learner, workers, devices, "--kill-at", str(kill_at), expect_kill=True)
    assert not (tmp_path / "final.pt").exists()
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == kill_at
    job(tmp_path, learner, workers, devices, "--resume", str(tmp_path / "last.ckpt"))
    assert_bitwise_equal(uninterrupted(learner, devices), torch.load(tmp_path / "final.pt"))


def test_resume_after_a_kill_at_an_arbitrary_moment(tmp_path, uninterrupted):
    """The kill comes from outside, at whatever point the job has reached (possibly inside a checkpoint
    write): ``last.ckpt`` is still a complete checkpoint and the resumed run ends where the uninterrupted did."""
    env = script_env()
    command = [sys.executable, str(SCRIPT), str(tmp_path), "maml", "2", "1", str(MAX_STEPS)]
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (tmp_path / "epoch=0-step=3.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    step = torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"]
    print(f"killed from outside; last.ckpt was at step {step}")
    assert 1 <= step < MAX_STEPS  # ModelCheckpoint writes epoch=0-step=3.ckpt before last.ckpt
    job(tmp_path, "maml", 2, 1, "--resume", str(tmp_path / "last.ckpt"))
    assert_bitwise_equal(uninterrupted("maml", 1), torch.load(tmp_path / "final.pt"))
