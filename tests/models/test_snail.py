"""SNAIL: equal to the paper's formulation (each query the last element of its own sequence, computed by plain
dilated causal ``conv1d`` and masked attention), and causal: no item sees a later one, no query another query."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_trainer

from lightning_meta import BlackBoxAdaptation, TaskBatch
from lightning_meta.models import MLP, SNAIL
from lightning_meta.models.snail import AttentionBlock, DenseBlock, TCBlock


def reference_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """One block on whole sequences ``x [B, L, D]``, written as the paper states it."""
    if isinstance(layer, TCBlock):
        for block in layer.blocks:
            x = reference_layer(block, x)
        return x
    if isinstance(layer, DenseBlock):  # causal conv1d, kernel 2, dilation R: taps t - R and t
        weight = torch.stack([layer.past.weight, layer.now.weight], -1)  # [2D, in, 2]
        pre = F.conv1d(F.pad(x.transpose(1, 2), (layer.dilation, 0)), weight, layer.now.bias, dilation=layer.dilation)
        xf, xg = pre.transpose(1, 2).split(layer.filters, -1)
        return torch.cat([x, torch.tanh(xf) * torch.sigmoid(xg)], -1)
    assert isinstance(layer, AttentionBlock)
    length = x.shape[1]
    logits = layer.query(x) @ layer.key(x).transpose(1, 2) / math.sqrt(layer.key.out_features)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    return torch.cat([x, probs @ layer.value(x)], -1)


def reference(snail: SNAIL, support: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Support features, and every query's features as the last element of ``[support..., query]``."""
    outs = []
    for j in range(queries.shape[1]):
        x = torch.cat([support, queries[:, j : j + 1]], 1)
        for layer in snail.layers:
            x = reference_layer(layer, x)
        outs.append(x)
    return outs[0][:, :-1], torch.cat([o[:, -1:] for o in outs], 1)


@pytest.mark.parametrize("support_size, sequence_length", [(5, 6), (10, 6), (1, 2), (25, 26)])
def test_equals_the_papers_formulation(support_size, sequence_length):
    torch.manual_seed(0)
    snail = SNAIL(7, sequence_length, filters=6, attention=((5, 3), (6, 4), (7, 5))).double()
    support, queries = torch.randn(2, support_size, 7).double(), torch.randn(2, 4, 7).double()
    got_s, got_q = snail(support, queries)
    want_s, want_q = reference(snail, support, queries)
    assert got_q.shape == (2, 4, snail.out_features)
    torch.testing.assert_close(got_s, want_s)
    torch.testing.assert_close(got_q, want_q)


def test_paper_widths_and_depth():
    snail = SNAIL(69, 6)  # Omniglot 5-way 1-shot: 64 features + 5 label values, T = 6
    assert [len(layer.blocks) for layer in snail.layers if isinstance(layer, TCBlock)] == [3, 3]
    assert [b.dilation for b in snail.layers[1].blocks] == [2, 4, 8]
    assert snail.out_features == 69 + 32 + 3 * 128 + 128 + 3 * 128 + 256
    assert [len(layer.blocks) for layer in SNAIL(69, 26).layers if isinstance(layer, TCBlock)] == [5, 5]


def grad(output: torch.Tensor, inputs: tuple) -> tuple:
    return torch.autograd.grad(output, inputs, retain_graph=True, allow_unused=True, materialize_grads=True)


def test_no_item_sees_a_later_one_and_no_query_another_query():
    torch.manual_seed(0)
    snail = SNAIL(7, 6, filters=6, attention=((5, 3), (6, 4), (7, 5))).double()
    support = torch.randn(1, 5, 7, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(1, 4, 7, dtype=torch.float64, requires_grad=True)
    out_s, out_q = snail(support, queries)
    for i in range(5):  # support item i depends on items 0..i only, never on a query
        g_s, g_q = grad(out_s[0, i].sum(), (support, queries))
        assert i == 4 or g_s[0, i + 1 :].abs().max() == 0
        assert g_s[0, : i + 1].abs().sum(-1).min() > 0  # and does see each of them
        assert g_q.abs().max() == 0
    for j in range(4):  # query j sees every support item and itself, no other query
        g_s, g_q = grad(out_q[0, j].sum(), (support, queries))
        assert g_s[0].abs().sum(-1).min() > 0
        assert g_q[0, j].abs().sum() > 0
        assert torch.cat([g_q[0, :j], g_q[0, j + 1 :]]).abs().max() == 0


def sinusoid_batch() -> TaskBatch:
    torch.manual_seed(2)
    x = torch.rand(3, 12, 1) * 10 - 5
    return TaskBatch(x[:, :8], torch.sin(x[:, :8]), x[:, 8:], torch.sin(x[:, 8:]))


def snail_learner() -> BlackBoxAdaptation:
    torch.manual_seed(0)
    return BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, aggregator="snail", task_dim=4,
                              hidden=8, support_size=8).double()


def test_blackbox_snail_is_sensitive_to_support_order_and_not_to_other_queries():
    learner, batch = snail_learner(), sinusoid_batch()
    batch = TaskBatch(*(t.double() for t in batch))
    out = learner(batch)
    perm = torch.tensor([3, 1, 0, 2, 7, 5, 6, 4])
    shuffled = learner(TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y))
    assert (shuffled - out).abs().max() > 1e-4
    fewer = learner(TaskBatch(batch.support_x, batch.support_y, batch.query_x[:, :2], batch.query_y[:, :2]))
    torch.testing.assert_close(fewer, out[:, :2])  # dropping queries 2-3 changes nothing for queries 0-1


def test_blackbox_snail_gradients_reach_every_parameter():
    learner = snail_learner()
    learner.objective(TaskBatch(*(t.double() for t in sinusoid_batch()))).loss.backward()
    # as in the paper, dilations run 2, 4, ..., 2^ceil(log2 T): with T = 9 the last one (16) reaches past the start
    # of every sequence, so that block's past tap reads only padding and gets a zero gradient (not None: DDP-safe)
    dead = ["snail.layers.1.blocks.3.past.weight", "snail.layers.3.blocks.3.past.weight"]
    assert [learner.snail.layers[i].blocks[3].dilation for i in (1, 3)] == [16, 16]
    assert all(learner.get_parameter(n).grad.abs().max() == 0 for n in dead)
    alive = {n: p.grad for n, p in learner.named_parameters() if n not in dead}
    assert not [n for n, g in alive.items() if g is None or not g.abs().sum() > 0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="sequence_length \\(support size \\+ 1\\) must be an integer >= 2, got 1"):
        SNAIL(4, 1)
    with pytest.raises(ValueError, match="in_features must be an integer >= 1, got None"):
        SNAIL(None, 6)
    with pytest.raises(ValueError, match="filters must be an integer >= 1, got 0"):
        SNAIL(4, 6, filters=0)
    with pytest.raises(ValueError, match="attention must be three \\(key_size, value_size\\) pairs"):
        SNAIL(4, 6, attention=((64, 32), (256,), (512, 256)))
    with pytest.raises(ValueError, match=r"attention\[1\] value_size must be an integer >= 1, got 0"):
        SNAIL(4, 6, attention=((64, 32), (256, 0), (512, 256)))
    with pytest.raises(ValueError, match="support_size must be an integer >= 1, got 0"):
        BlackBoxAdaptation(MLP(out_features=8), feature_dim=8, aggregator="snail", support_size=0)


def test_blackbox_snail_trains_under_bf16_mixed():
    """A real Trainer fit under bf16 autocast on CPU: the query MSE falls and every weight stays finite."""
    from lightning_meta import EpisodicDataModule, SinusoidTasks

    torch.manual_seed(0)
    learner = BlackBoxAdaptation(MLP(out_features=32, hidden=(32,)), feature_dim=32, aggregator="snail", task_dim=16,
                                 hidden=32, support_size=10)
    dm = EpisodicDataModule(SinusoidTasks(shots=10, queries=10), meta_batch_size=25, train_episodes_per_epoch=25 * 100,
                            val_episodes=0, test_episodes=100, eval_meta_batch_size=100)
    trainer = tiny_trainer(max_steps=100, precision="bf16-mixed")
    before = trainer.test(learner, dm, verbose=False)[0]["test/mse"]
    trainer.fit(learner, dm)
    after = trainer.test(learner, dm, verbose=False)[0]["test/mse"]
    assert all(torch.isfinite(p).all() for p in learner.parameters())
    assert after < 0.8 * before, (before, after)
