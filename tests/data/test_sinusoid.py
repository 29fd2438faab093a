import math

import pytest
import torch

from lightning_meta.data import SinusoidTasks
from lightning_meta.data.seeding import task_generator


def test_parameters_within_range_and_targets_follow_the_formula():
    tasks = SinusoidTasks(shots=5, queries=7)
    batch = tasks.sample("train", [task_generator(0, "train", 0, i) for i in range(500)])
    params = tasks.parameters_of([task_generator(0, "train", 0, i) for i in range(500)])
    amp, phase = params[:, 0], params[:, 1]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and amp.max() > 4.8 and amp.min() < 0.3
    assert phase.min() >= 0.0 and phase.max() <= math.pi and phase.max() > 3.0
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.shape == (500, 12, 1) and x.min() >= -5 and x.max() <= 5
    torch.testing.assert_close(y, amp[:, None, None] * torch.sin(x - phase[:, None, None]))


def test_seeded_and_split_dependent():
    tasks = SinusoidTasks()
    a = tasks.sample("val", [task_generator(3, "val", 0, i) for i in range(4)])
    b = tasks.sample("val", [task_generator(3, "val", 0, i) for i in range(4)])
    c = tasks.sample("test", [task_generator(3, "test", 0, i) for i in range(4)])
    assert torch.equal(a.query_y, b.query_y) and not torch.equal(a.query_y, c.query_y)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shots=0), "shots must be an integer >= 1, got 0"),
    (dict(amplitude=(5.0, 0.1)), "amplitude must be (low, high) with low <= high"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SinusoidTasks(**kwargs)
