"""``vectorize=True`` (one ``torch.func.vmap`` over the tasks) against the per-task loop, option by option."""

import pytest
import torch

import lightning_meta.functional.maml as objective_module
from lightning_meta import MAML, SinusoidTasks, TaskBatch
from lightning_meta.data.seeding import task_generator
from lightning_meta.models import MLP, Conv4


def sinusoid_batch(tasks=3):
    generators = [task_generator(1, "train", 0, i) for i in range(tasks)]
    return TaskBatch(*(t.double() for t in SinusoidTasks(shots=5, queries=6).sample("train", generators)))


def image_batch(tasks=3, ways=2, shots=2):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(tasks, 2 * ways * shots, 1, 16, 16, generator=gen, dtype=torch.float64)
    labels = torch.arange(ways).repeat(shots)
    n = ways * shots
    return TaskBatch(x[:, :n], labels.repeat(tasks, 1), x[:, n:], labels.flip(0).repeat(tasks, 1))


def mlp():
    return MLP(hidden=(6, 6), activation="tanh").double()


def conv4():
    return Conv4(out_features=2, hidden=4, image_size=16).double()


#: name -> (model factory, batch factory, MAML kwargs); every case differs from the default second-order one
CASES = {
    "first_order": (mlp, sinusoid_batch, dict(meta_gradient="first_order")),
    "first_order_conv4_batch_norm": (conv4, image_batch, dict(meta_gradient="first_order")),
    "per_tensor_lr": (mlp, sinusoid_batch, dict(learn_inner_lr="per_tensor")),
    "per_step_lr": (mlp, sinusoid_batch, dict(learn_inner_lr="per_step", inner_steps=3)),
    "per_step_lr_first_order": (mlp, sinusoid_batch, dict(learn_inner_lr="per_step", meta_gradient="first_order")),
    "adapt_head": (mlp, sinusoid_batch, dict(adapt="head")),
    "adapt_patterns_per_tensor_lr": (mlp, sinusoid_batch, dict(adapt=["body.2.*", "head.bias"],
                                                               learn_inner_lr="per_tensor")),
    "adapt_head_conv4_batch_norm": (conv4, image_batch, dict(adapt="head", learn_inner_lr="per_tensor")),
    "inner_loss_scale": (mlp, sinusoid_batch, dict(inner_loss_scale=2.0**10)),
    "inner_loss_scale_first_order_per_step_lr": (mlp, sinusoid_batch, dict(
        inner_loss_scale=2.0**10, meta_gradient="first_order", learn_inner_lr="per_step")),
}


@pytest.fixture
def vmap_calls(monkeypatch):
    """Counts the calls of ``vmap`` made by MAML, so that a test knows the vectorized path really ran."""
    calls = []

    def counting_vmap(*args, **kwargs):
        calls.append(1)
        return torch.func.vmap(*args, **kwargs)

    monkeypatch.setattr(objective_module, "vmap", counting_vmap)
    return calls


def run(vectorize: bool, case: str):
    make_model, make_batch, kwargs = CASES[case]
    torch.manual_seed(1)
    kwargs = {"inner_lr": 0.2, "inner_steps": 2, **kwargs}
    maml = MAML(make_model(), vectorize=vectorize, **kwargs).double()
    if isinstance(maml.inner_lrs, torch.nn.Parameter):  # distinct lrs: a lr on the wrong tensor or step shows
        with torch.no_grad():
            maml.inner_lrs.copy_(0.1 + 0.02 * torch.arange(maml.inner_lrs.numel()).view_as(maml.inner_lrs))
    batch = make_batch()
    loss = maml.objective(batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in maml.named_parameters() if p.grad is not None}
    return loss.detach(), grads, maml.predict_step(batch, 0)


@pytest.mark.parametrize("case", list(CASES))
def test_vmap_equals_loop(case, vmap_calls):
    loop_loss, loop_grads, loop_pred = run(False, case)
    assert not vmap_calls
    vmap_loss, vmap_grads, vmap_pred = run(True, case)
    assert len(vmap_calls) >= 1  # the objective vectorized (evaluation adapts task by task)
    torch.testing.assert_close(vmap_loss, loop_loss, atol=1e-12, rtol=1e-10)
    assert set(vmap_grads) == set(loop_grads)
    if "lr" in case:
        assert loop_grads["inner_lrs"].abs().min() > 0
    for name in loop_grads:
        torch.testing.assert_close(vmap_grads[name], loop_grads[name], atol=1e-9, rtol=1e-9, msg=name)
    torch.testing.assert_close(vmap_pred, loop_pred, atol=1e-9, rtol=1e-9)


def test_vectorize_with_hvp_is_refused_at_construction():
    """``vmap`` has no HVP path: the combination must not silently run the loop."""
    with pytest.raises(ValueError) as info:
        MAML(mlp(), meta_gradient="hvp", vectorize=True)
    assert "vectorize" in str(info.value) and "hvp" in str(info.value)
