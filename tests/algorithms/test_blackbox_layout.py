"""BlackBoxAdaptation's encoder pass: channels-last strides and tasks per pass (same numbers as one pass)."""

import pytest
import torch

from lightning_meta import BlackBoxAdaptation, TaskBatch
from lightning_meta.models import Conv4


def image_batch(tasks=4, ways=3, shots=2, queries=3, side=16) -> TaskBatch:
    """One-channel images in separate contiguous tensors, as a DataLoader delivers them."""
    torch.manual_seed(0)
    return TaskBatch(torch.rand(tasks, ways * shots, 1, side, side), torch.arange(ways).repeat(tasks, shots),
                     torch.rand(tasks, ways * queries, 1, side, side), torch.arange(ways).repeat(tasks, queries))


def model(aggregator="attention", batch_norm=True, **kw) -> BlackBoxAdaptation:
    torch.manual_seed(1)
    return BlackBoxAdaptation(Conv4(embed_only=True, hidden=8, image_size=16, batch_norm=batch_norm),
                              aggregator=aggregator, ways=3, task_dim=8, hidden=16, **kw).double()


def grads(learner: BlackBoxAdaptation, batch: TaskBatch) -> tuple[torch.Tensor, dict]:
    learner.zero_grad()
    objective = learner.objective(batch)
    objective.loss.backward()
    return objective.query_outputs, {n: p.grad.clone() for n, p in learner.named_parameters()}


def double(batch: TaskBatch) -> TaskBatch:
    return TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch))


def test_channels_last_reaches_the_encoder_with_nhwc_strides_and_same_numbers():
    """As for MAML: one-channel images must arrive NHWC (stride(C) == 1), else BN and pooling run the slow path."""
    batch = double(image_batch())
    results, strides = [], {}
    for channels_last in (False, True):
        learner = model(channels_last=channels_last)
        seen = strides.setdefault(channels_last, [])
        bn = learner.encoder.features[0][1]
        hook = bn.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].stride()))
        results.append(grads(learner, batch))
        hook.remove()
        assert all(p.is_contiguous(memory_format=torch.channels_last) == channels_last
                   for p in learner.encoder.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert strides[True] and all(s[1] == 1 for s in strides[True]), strides[True]
    assert all(s[1] != 1 for s in strides[False]), strides[False]
    torch.testing.assert_close(results[1][0], results[0][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


@pytest.mark.parametrize("aggregator", ["mean", "attention", "sequence", "snail"])
def test_tasks_per_pass_give_the_numbers_of_one_pass_without_batch_statistics(aggregator):
    """An encoder without BatchNorm: 1, 3 (uneven last pass) or all 4 tasks per pass, same outputs and gradients."""
    batch = double(image_batch())
    reference = grads(model(aggregator, batch_norm=False, encoder_tasks="all"), batch)
    for per_pass in (1, 3):
        outputs, gradients = grads(model(aggregator, batch_norm=False, encoder_tasks=per_pass), batch)
        torch.testing.assert_close(outputs, reference[0])
        for name, grad in reference[1].items():
            torch.testing.assert_close(gradients[name], grad, msg=name)


def test_tasks_per_pass_give_the_numbers_of_one_pass_in_evaluation():
    """With BatchNorm in eval mode (running statistics) the pass size changes nothing either."""
    batch = double(image_batch())
    outputs = []
    for per_pass in ("all", 1, 3):
        learner = model(encoder_tasks=per_pass)
        learner.encoder(torch.rand(20, 1, 16, 16, dtype=torch.float64))  # running statistics away from 0 / 1
        learner.eval()
        with torch.no_grad():
            outputs.append(learner.predict_step(batch, 0))
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])


def test_one_task_per_pass_normalizes_each_task_by_its_own_statistics():
    """Training mode, BatchNorm, one task per pass: each task's outputs equal that task run alone, so a task's
    features do not depend on the other tasks of the meta-batch (as in MAML and ProtoNet)."""
    batch = double(image_batch())
    together = model(encoder_tasks=1)(batch)
    for t in range(batch.num_tasks):
        alone = model(encoder_tasks="all")(TaskBatch(*(x[t : t + 1] for x in batch)))
        torch.testing.assert_close(together[t : t + 1], alone)
    whole = model(encoder_tasks="all")(batch)  # meta-batch statistics: another model, visibly
    assert (whole - together).abs().max() > 1e-3


def test_auto_is_one_task_per_pass_on_cpu_and_the_whole_meta_batch_elsewhere():
    learner = model()
    assert learner.tasks_per_pass(32, torch.device("cpu")) == 1
    assert learner.tasks_per_pass(32, torch.device("cuda")) == 32
    assert model(encoder_tasks=8).tasks_per_pass(5, torch.device("cpu")) == 5
    assert model(encoder_tasks="all").tasks_per_pass(5, torch.device("cpu")) == 5


@pytest.mark.parametrize("bad", [0, -2, "some", 1.5, True])
def test_bad_encoder_tasks_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=f"encoder_tasks must be 'auto', 'all' or an integer >= 1, got {bad!r}"):
        model(encoder_tasks=bad)
