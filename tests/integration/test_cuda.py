"""CUDA-only checks: 16-mixed precision (GradScaler + the inner-loop loss scale) and NCCL DDP.

They need a GPU; on a machine without one they skip, and the reason is printed in the test summary.
"""

import pytest
import torch
from conftest import run_script

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine: 16-mixed (GradScaler) and NCCL DDP are checked on a GPU machine",
)
needs_two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 CUDA devices; this machine has fewer"
)


@needs_cuda
def test_16_mixed_maml_trains_with_finite_inner_gradients():
    from maml_job import trainer

    from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
    from lightning_meta.models import MLP

    torch.manual_seed(0)
    model = MAML(MLP(), inner_lr=0.01, inner_steps=1, eval_inner_steps=10)
    dm = EpisodicDataModule(SinusoidTasks(), meta_batch_size=25, train_episodes_per_epoch=10000, val_episodes=0,
                            test_episodes=200, eval_meta_batch_size=100)
    t = trainer(accelerator="gpu", devices=1, precision="16-mixed", max_steps=300)
    before = t.test(model, dm, verbose=False)[0]["test/mse"]
    t.fit(model, dm)
    assert model._loss_scale() == 2.0**10
    after = t.test(model, dm, verbose=False)[0]["test/mse"]
    assert after < 0.8 * before


@needs_two_gpus
def test_nccl_ddp_update_equals_one_device(tmp_path):
    from maml_job import build, trainer

    run_script("ddp_maml.py", str(tmp_path), "ddp", "4", "3", "second_order", "gpu")
    saved = torch.load(tmp_path / "ddp.pt", weights_only=False, map_location="cpu")
    model, dm = build(8)
    trainer(devices=1, max_steps=3).fit(model, dm)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["state"][name], value, atol=1e-5, rtol=1e-4)
