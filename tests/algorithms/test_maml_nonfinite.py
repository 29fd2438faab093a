"""A non-finite query loss (finite support losses) is reported as "the query loss of task N"."""

import re

import pytest
import torch

from lightning_meta import MAML, TaskBatch
from lightning_meta.models import MLP


def batch_with_bad_query(task: int, tasks: int = 4) -> TaskBatch:
    gen = torch.Generator().manual_seed(0)
    xs, xq = torch.randn(tasks, 5, 1, generator=gen), torch.randn(tasks, 6, 1, generator=gen)
    yq = torch.randn(tasks, 6, 1, generator=gen)
    yq[task, 3, 0] = float("nan")  # only task `task`'s query targets: its support and every inner step stay finite
    return TaskBatch(xs, torch.sin(xs), xq, yq)


@pytest.mark.parametrize("mode, vectorize", [("second_order", False), ("first_order", False), ("hvp", False),
                                             ("second_order", True), ("first_order", True)])
@pytest.mark.parametrize("task", [0, 2])
def test_non_finite_query_loss_names_its_task(task, mode, vectorize):
    torch.manual_seed(0)
    maml = MAML(MLP(hidden=(8, 8)), inner_lr=0.01, inner_steps=2, meta_gradient=mode, vectorize=vectorize)
    batch = batch_with_bad_query(task)
    message = f"MAML: non-finite loss at the query loss of task {task} (global step 0)"
    with pytest.raises(FloatingPointError, match=re.escape(message)):
        maml.training_step(batch, 0)
    # the same batch with the task's query fixed trains normally: the query loss alone was the cause
    fixed = batch._replace(query_y=torch.nan_to_num(batch.query_y))
    assert torch.isfinite(maml.objective(fixed).loss)
    skip = MAML(MLP(hidden=(8, 8)), inner_lr=0.01, inner_steps=2, meta_gradient=mode, vectorize=vectorize,
                nonfinite="skip")
    loss = skip.training_step(batch, 0)
    loss.backward()
    assert loss.item() == 0 and all(p.grad is not None and not p.grad.any() for p in skip.parameters())
