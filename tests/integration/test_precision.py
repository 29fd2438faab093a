"""Mixed precision inside the inner loop, on CPU: autocast really on in every inner-loop forward, bf16-mixed and
16-mixed meta-gradients close to float32 ones for every meta-gradient mode, the inner-loss scale chosen per
precision (16-mixed included, through Lightning's own plugin on CPU) and leaving float64 gradients unchanged."""

import warnings

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_trainer
from pytorch_lightning.plugins import MixedPrecision
from torch import nn
from torch.amp import GradScaler
from torch.utils.data import DataLoader

from lightning_meta import MAML, SinusoidTasks, TaskBatch
from lightning_meta.algorithms.maml import FP16_INNER_LOSS_SCALE
from lightning_meta.data.seeding import task_generator
from lightning_meta.models import MLP

# training_step without a Trainer (self.log warns) and one-batch fits (no val loader, few workers)
pytestmark = pytest.mark.filterwarnings("ignore:.*val_dataloader.*")

MODES = ["second_order", "first_order", "hvp"]
STEPS, TASKS, SHOTS, QUERIES = 2, 4, 5, 7


def sinusoid_batch(dtype=torch.float32) -> TaskBatch:
    generators = [task_generator(2, "train", 0, i) for i in range(TASKS)]
    return TaskBatch(*(t.to(dtype) for t in SinusoidTasks(shots=SHOTS, queries=QUERIES).sample("train", generators)))


class Probe(nn.Module):
    """A tanh MLP that records, for every forward, the batch size, whether CPU autocast is on, the dtype of
    its hidden activations and (when a gradient flows back) the largest gradient reaching its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP(hidden=(16, 16), activation="tanh")
        self.forwards: list[tuple[int, bool, torch.dtype]] = []
        self.output_grads: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net.body(x)
        self.forwards.append((x.shape[0], torch.is_autocast_enabled("cpu"), h.dtype))
        out = self.net.head(h)
        if out.requires_grad:
            out.register_hook(lambda g: self.output_grads.append(g.abs().max().item()))
        return out


class RecordingMAML(MAML):
    """Records ``_loss_scale()`` inside each training step and the gradients Lightning hands the optimizer."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scales: list[float] = []
        self.grads: dict[str, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        self.scales.append(self._loss_scale())
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.grads = {n: p.grad.detach().float().clone() for n, p in self.named_parameters() if p.grad is not None}


def make_trainer(precision="32-true", plugins=None) -> pl.Trainer:
    kwargs = dict(plugins=plugins) if plugins is not None else dict(precision=precision)
    return tiny_trainer(max_steps=1, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def one_training_step(mode: str, precision="32-true", plugins=None, **kwargs) -> tuple[RecordingMAML, pl.Trainer]:
    """One real ``fit`` step of a per-step-lr MAML on a 4-task sinusoid batch; its gradients are recorded."""
    model = RecordingMAML(Probe(), inner_lr=0.1, inner_steps=STEPS, meta_gradient=mode,
                          learn_inner_lr="per_step", **kwargs)
    trainer = make_trainer(precision, plugins)
    trainer.fit(model, train_dataloaders=DataLoader([sinusoid_batch()], batch_size=None))
    return model, trainer


def relative_error(a: dict, b: dict) -> float:
    num = sum(((a[n] - b[n]) ** 2).sum() for n in b) ** 0.5
    return float(num / sum((b[n] ** 2).sum() for n in b) ** 0.5)


@pytest.fixture(scope="module")
def float32_steps() -> dict[str, RecordingMAML]:
    return {mode: one_training_step(mode)[0] for mode in MODES}


#: precision -> (fresh Trainer arguments, autocast dtype, inner loss scale, tolerance: relative L2 error against
#: float32).
#: "16-mixed" is float16 autocast with a GradScaler through Lightning's own plugin on CPU (Trainer(precision=
#: "16-mixed") becomes bf16-mixed there), init scale 2**8: the default 2**16 overflows and skips the first step.
#: Measured errors: bf16 1.2e-2 (weights) / 2.7e-3 (lrs), fp16 2e-3 / 1e-3 for second_order and hvp; less for
#: first_order.
MIXED = {
    "bf16-mixed": (lambda: dict(precision="bf16-mixed"), torch.bfloat16, 1.0, 0.04),
    "16-mixed": (lambda: dict(plugins=[MixedPrecision("16-mixed", "cpu", GradScaler("cpu", init_scale=2.0**8))]),
                 torch.float16, FP16_INNER_LOSS_SCALE, 0.01),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", list(MIXED))
def test_mixed_precision_autocasts_the_inner_loop_and_matches_float32_gradients(precision, mode, float32_steps):
    reference = float32_steps[mode]
    # float32 control: no autocast anywhere, float32 activations
    assert reference.model.forwards and all(not on and dt == torch.float32 for _, on, dt in reference.model.forwards)

    trainer_args, dtype, scale, tolerance = MIXED[precision]
    model, trainer = one_training_step(mode, **trainer_args())
    assert trainer.precision == precision and model.scales == [scale]
    forwards = model.model.forwards
    support = [f for f in forwards if f[0] == SHOTS]
    assert len(support) >= TASKS * STEPS and sum(f[0] == QUERIES for f in forwards) >= TASKS
    assert all(on and dt == dtype for _, on, dt in forwards), forwards  # every support and query forward

    assert set(model.grads) == set(reference.grads) and "inner_lrs" in model.grads
    other = float32_steps["first_order" if mode != "first_order" else "second_order"]
    # weights and inner lrs apart: the lrs' larger gradient would otherwise hide the weights' error
    for group in (lambda n: n != "inner_lrs", lambda n: n == "inner_lrs"):
        got, want, wrong = ({n: g for n, g in m.grads.items() if group(n)} for m in (model, reference, other))
        error = relative_error(got, want)
        assert 0 < error < tolerance, error  # rounding shows (autocast acted), within the precision's tolerance
        assert relative_error(wrong, want) > 10 * tolerance  # a tolerance that tells the modes apart


@pytest.mark.parametrize("precision, reported, scale", [
    ("32-true", "32-true", 1.0),
    ("64-true", "64-true", 1.0),
    ("bf16-mixed", "bf16-mixed", 1.0),
    # on CPU Lightning 2.x runs 16-mixed as bf16-mixed (warning "AMP with fp16 is not supported on CPU"): no scale
    ("16-mixed", "bf16-mixed", 1.0),
    # float16 autocast on CPU through Lightning's plugin (with its GradScaler): the 16-mixed inner scale
    ("plugin-16-mixed", "16-mixed", FP16_INNER_LOSS_SCALE),
])
def test_loss_scale_follows_the_trainer_precision(precision, reported, scale):
    plugins = MIXED["16-mixed"][0]()["plugins"] if precision == "plugin-16-mixed" else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fp16 is not supported on CPU.*")
        model, trainer = one_training_step("second_order", precision, plugins)
    assert trainer.precision == reported
    assert model.scales == [scale]  # read inside the training step of a real fit
    assert model._loss_scale() == scale
    if reported == "16-mixed":
        assert all(on and dt == torch.float16 for _, on, dt in model.model.forwards)
    for explicit in (1.0, 8.0):  # an explicit inner_loss_scale overrides the precision's default
        other = MAML(Probe(), inner_loss_scale=explicit)
        other.trainer = trainer
        assert other._loss_scale() == explicit
    assert MAML(Probe())._loss_scale() == 1.0  # no trainer


@pytest.mark.parametrize("mode, hvp_method", [("second_order", "autograd"), ("first_order", "autograd"),
                                              ("hvp", "autograd"), ("hvp", "finite_difference")])
def test_inner_loss_scale_changes_no_float64_gradient(mode, hvp_method):
    """Scale 2**10 multiplies the inner loss before differentiation (the gradient reaching the output of the
    first support forward is 2**10 times larger) and changes no meta-gradient, inner lrs' included."""
    batch = sinusoid_batch(torch.float64)
    grads, first_output_grad = {}, {}
    for scale in (1.0, 2.0**10):
        model = MAML(Probe(), inner_lr=0.1, inner_steps=STEPS, meta_gradient=mode, hvp_method=hvp_method,
                     learn_inner_lr="per_step", inner_loss_scale=scale).double()
        model.objective(batch).loss.backward()
        grads[scale] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        first_output_grad[scale] = model.model.output_grads[0]
    assert first_output_grad[2.0**10] == 2.0**10 * first_output_grad[1.0]
    assert set(grads[1.0]) == set(grads[2.0**10]) and "inner_lrs" in grads[1.0]
    tol = 1e-9 if hvp_method == "finite_difference" else 1e-13
    for name, g in grads[1.0].items():
        torch.testing.assert_close(grads[2.0**10][name], g, atol=tol, rtol=tol, msg=name)
