"""``learner.adapt(support_x, support_y)``: one task's self-contained module, equal to ``predict_step`` for every
learner (the oracle: the learner's own evaluation path on the same task), in evaluation mode whatever mode the
learner is in, with the user's class names; and prediction of unlabeled queries."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_trainer
from torch.utils.data import DataLoader

from lightning_meta import IMAML, MAML, AdaptedLearner, BlackBoxAdaptation, ProtoNet, Reptile, TaskBatch
from lightning_meta.models import MLP, Conv4
from lightning_meta.models.adapted import encode_classes


def conv(**kw):
    return Conv4(hidden=8, image_size=16, **kw)


#: every learner (and black-box aggregator) on 3-way image tasks
CLASSIFIERS = {
    "MAML": lambda: MAML(conv(out_features=3), inner_lr=0.1, eval_inner_steps=2),
    "MAML-per-step-BN": lambda: MAML(conv(out_features=3), inner_lr=0.1, inner_steps=2, batch_norm="per_step"),
    "IMAML": lambda: IMAML(conv(out_features=3), inner_lr=0.1, inner_steps=2, cg_steps=2),
    "Reptile": lambda: Reptile(conv(out_features=3), inner_lr=0.1, inner_steps=2),
    "ProtoNet": lambda: ProtoNet(conv(embed_only=True)),
    **{f"BlackBox-{a}": (lambda a=a: BlackBoxAdaptation(conv(embed_only=True), aggregator=a, ways=3, task_dim=4,
                                                         hidden=8))
       for a in ("mean", "attention", "sequence", "snail")},
}
REGRESSORS = {
    "MAML": lambda: MAML(MLP(hidden=(16,)), inner_lr=0.01, eval_inner_steps=3),
    "BlackBox-variance": lambda: BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, task_dim=4,
                                                    hidden=8, predict_variance=True),
}


def image_task(ways: int = 3, shots: int = 2, queries: int = 5, seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(torch.rand(1, ways * shots, 1, 16, 16, generator=g), torch.arange(ways).repeat(1, shots),
                     torch.rand(1, queries, 1, 16, 16, generator=g), torch.randint(ways, (1, queries), generator=g))


def sinusoid_task(seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 15, 1, generator=g) * 10 - 5
    y = 2 * torch.sin(x + 1)
    return TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def trained_mode_predict(learner, batch: TaskBatch) -> torch.Tensor:
    """``predict_step`` as ``trainer.predict`` runs it: evaluation mode, inference mode."""
    learner.eval()
    with torch.inference_mode():
        out = learner.predict_step(batch, 0)
    learner.train()
    return out


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_the_adapted_module_predicts_what_predict_step_does(name):
    torch.manual_seed(0)
    learner, batch = CLASSIFIERS[name](), image_task()
    expected = trained_mode_predict(learner, batch)[0]
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    assert isinstance(adapted, AdaptedLearner) and not adapted.training
    assert adapted.classes == [0, 1, 2]
    torch.testing.assert_close(adapted(batch.query_x[0]), expected, rtol=1e-5, atol=1e-5)
    assert learner.training, "adapt leaves the learner in the mode it was in"
    for key, value in learner.state_dict().items():
        assert torch.equal(value, before[key]), f"adapt changed the learner's {key}"
    assert not any(p.requires_grad for p in adapted.parameters())


@pytest.mark.parametrize("name", list(REGRESSORS))
def test_regression_learners_adapt_to_float_targets(name):
    torch.manual_seed(0)
    learner, batch = REGRESSORS[name](), sinusoid_task()
    expected = trained_mode_predict(learner, batch)[0]
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    assert adapted.classes is None and adapted.task_type == "regression"
    torch.testing.assert_close(adapted(batch.query_x[0]), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapted.predict(batch.query_x[0]), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="classification"):
        adapted.predict_proba(batch.query_x[0])


@pytest.mark.parametrize("name", ["MAML", "ProtoNet", "BlackBox-attention"])
def test_class_names_map_to_the_sorted_labels(name):
    """Names are sorted into ``classes``; column ``i`` of the scores is ``classes[i]``: the oracle is ``predict_step``
    on the task relabelled by that order."""
    torch.manual_seed(0)
    learner, batch = CLASSIFIERS[name](), image_task()
    names = ["owl", "cat", "dog"]  # label 0 is "owl": sorted, "owl" is column 2
    support_names = [names[i] for i in batch.support_y[0].tolist()]
    adapted = learner.adapt(batch.support_x[0], support_names)
    assert adapted.classes == ["cat", "dog", "owl"]
    relabelled = batch._replace(support_y=encode_classes(support_names)[0][None])
    expected = trained_mode_predict(learner, relabelled)[0]
    scores = adapted(batch.query_x[0])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert adapted.predict(batch.query_x[0]) == [adapted.classes[i] for i in expected.argmax(-1).tolist()]
    probabilities = adapted.predict_proba(batch.query_x[0])
    torch.testing.assert_close(probabilities, expected.softmax(-1), rtol=1e-5, atol=1e-6)


def test_encode_classes_sorts_names_and_keeps_first_seen_order_when_they_do_not_compare():
    indices, classes = encode_classes(["b", "a", "b"])
    assert classes == ["a", "b"] and indices.tolist() == [1, 0, 1]
    indices, classes = encode_classes([("x", 1), 3, ("x", 1)])  # a tuple and an int do not compare
    assert classes == [("x", 1), 3] and indices.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="1-D integer tensor"):
        encode_classes(torch.rand(3))
    with pytest.raises(ValueError, match="hashable"):
        encode_classes([[1], [2]])


def test_a_head_that_cannot_fit_the_support_set_is_a_clear_error_and_protonet_takes_any_ways():
    batch = image_task(ways=2)
    with pytest.raises(ValueError, match=r"2 classes \['a', 'b'\].*outputs \(3,\) scores.*exactly 3 classes"):
        CLASSIFIERS["MAML"]().adapt(batch.support_x[0], ["a", "b"] * 2)
    with pytest.raises(ValueError, match="3-way label input and head; a task with 4 ways"):
        CLASSIFIERS["BlackBox-mean"]().adapt(image_task(ways=4).support_x[0], list("abcd") * 2)
    fewer = CLASSIFIERS["BlackBox-mean"]().adapt(batch.support_x[0], ["a", "b"] * 2)  # fewer ways: masked
    assert fewer(batch.query_x[0]).shape == (5, 2)
    for ways in (2, 7):
        task = image_task(ways=ways)
        assert CLASSIFIERS["ProtoNet"]().adapt(task.support_x[0], task.support_y[0])(task.query_x[0]).shape == (5, ways)
    with pytest.raises(ValueError, match="one row per label"):
        CLASSIFIERS["ProtoNet"]().adapt(batch.support_x[0], ["a", "b"])
    with pytest.raises(ValueError, match="no inner loop"):
        CLASSIFIERS["ProtoNet"]().adapt(batch.support_x[0], batch.support_y[0], steps=3)


def test_steps_override_the_evaluation_steps():
    torch.manual_seed(0)
    learner, batch = CLASSIFIERS["MAML"](), image_task()
    phi = learner.adapted_params(batch.support_x[0], batch.support_y[0], steps=5)
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0], steps=5)
    learner.eval()
    torch.testing.assert_close(adapted(batch.query_x[0]), learner(batch.query_x[0], phi))


def test_adapt_predicts_in_evaluation_mode_whatever_mode_the_learner_is_in():
    """ProtoNet's Conv4 has BatchNorm with running statistics: in training mode a hand-made prediction would use the
    batch's statistics. ``adapt`` from a learner in training mode equals ``predict_step`` in evaluation mode."""
    torch.manual_seed(0)
    learner, batch = CLASSIFIERS["ProtoNet"](), image_task()
    for module in learner.modules():  # running statistics unlike a fresh model's, so the two modes differ
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(0.3)
            module.running_var.fill_(2.0)
    learner.train()
    train_mode = learner.objective(batch).query_outputs[0].detach()
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    expected = trained_mode_predict(learner, batch)[0]
    torch.testing.assert_close(adapted(batch.query_x[0]), expected, rtol=1e-5, atol=1e-5)
    assert (train_mode - expected).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["MAML", "IMAML", "ProtoNet", "BlackBox-mean", "BlackBox-snail"])
def test_predict_step_takes_unlabeled_queries(name):
    torch.manual_seed(0)
    learner, batch = CLASSIFIERS[name](), image_task()
    labeled = trained_mode_predict(learner, batch)
    unlabeled = trained_mode_predict(learner, batch._replace(query_y=None))
    torch.testing.assert_close(unlabeled, labeled, rtol=0, atol=0)


def test_trainer_predict_on_unlabeled_tasks_and_clear_errors_where_labels_are_needed():
    torch.manual_seed(0)
    learner = REGRESSORS["MAML"]()
    batches = [sinusoid_task(seed)._replace(query_y=None) for seed in range(3)]
    predictions = tiny_trainer().predict(learner, dataloaders=DataLoader(batches, batch_size=None))
    assert [tuple(p.shape) for p in predictions] == [(1, 10, 1)] * 3
    labeled = [trained_mode_predict(learner, sinusoid_task(seed)) for seed in range(3)]
    for got, expected in zip(predictions, labeled, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="training needs query labels"):
        learner.training_step(batches[0], 0)
    with pytest.raises(ValueError, match="test needs query labels"):
        learner.test_step(batches[0], 0)
