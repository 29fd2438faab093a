"""BlackBoxNetwork without Lightning, the same numbers as BlackBoxAdaptation, and the learner's state_dict names."""

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_meta import BlackBoxAdaptation, SinusoidTasks, TaskBatch
from lightning_meta.functional.blackbox import blackbox_losses, gaussian_outputs
from lightning_meta.models import MLP, BlackBoxNetwork, Conv4

AGGREGATORS = ["mean", "attention", "sequence", "snail"]
SMALL = dict(task_dim=4, hidden=8, ways=3)

#: the names every checkpoint of BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), aggregator="attention",
#: **SMALL) has had since before the network was its own module
ATTENTION_KEYS = [
    "encoder.body.0.weight", "encoder.body.0.bias", "encoder.head.weight", "encoder.head.bias",
    "pair_net.0.weight", "pair_net.0.bias", "pair_net.2.weight", "pair_net.2.bias",
    "task_net.0.weight", "task_net.0.bias", "task_net.2.weight", "task_net.2.bias",
    "query_proj.weight", "query_proj.bias", "key_proj.weight", "key_proj.bias",
    "attention.in_proj_weight", "attention.in_proj_bias", "attention.out_proj.weight", "attention.out_proj.bias",
    "predictor.0.weight", "predictor.0.bias", "predictor.2.weight", "predictor.2.bias",
    "predictor.4.weight", "predictor.4.bias",
]


def sinusoids(tasks: int, seed: int = 0) -> TaskBatch:
    return SinusoidTasks(shots=5, queries=5).sample("train", [torch.Generator().manual_seed(seed + i)
                                                             for i in range(tasks)])


def images(tasks=2, ways=3, shots=2, queries=2) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    return TaskBatch(torch.rand(tasks, ways * shots, 1, 16, 16, generator=g, dtype=torch.float64),
                     torch.arange(ways).repeat(tasks, shots),
                     torch.rand(tasks, ways * queries, 1, 16, 16, generator=g, dtype=torch.float64),
                     torch.arange(ways).repeat(tasks, queries))


def conv_options(aggregator: str) -> dict:
    return dict(aggregator=aggregator, task_dim=8, hidden=16, ways=5, support_size=6)


def test_network_is_a_plain_module_whose_forward_is_the_mean_read_out():
    """Regression with the mean aggregator, recomputed from the network's own layers: features, pairs, h_i, the
    mean pair and the predictor."""
    torch.manual_seed(0)
    net = BlackBoxNetwork(MLP(out_features=8, hidden=(8,)), feature_dim=8, **SMALL).double()
    assert not isinstance(net, pl.LightningModule)
    batch = TaskBatch(*(t.double() for t in sinusoids(2)))
    out = net(batch.support_x, batch.support_y, batch.query_x)
    fs, fq = net.encoder(batch.support_x), net.encoder(batch.query_x)
    pairs = net.pair_net(torch.cat([fs, F.pad(batch.support_y, (0, 2))], -1))
    h = net.task_net(pairs.mean(1))
    q = fq.shape[1]
    expected = net.predictor(torch.cat([fq, h[:, None].expand(-1, q, -1), pairs.mean(1, True).expand(-1, q, -1)], -1))
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(net.task_vector(batch.support_x, batch.support_y), h, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("aggregator", ["mean", "attention", "sequence"])
def test_network_trains_with_plain_torch(aggregator):
    """Forward, loss (``blackbox_losses``), backward and Adam steps, no Lightning: every parameter gets a gradient
    and the query MSE of a fixed batch of sinusoids falls."""
    torch.manual_seed(0)
    net = BlackBoxNetwork(MLP(out_features=16, hidden=(16,)), feature_dim=16, aggregator=aggregator, task_dim=8,
                          hidden=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    batch, losses = sinusoids(8), []
    for step in range(40):
        out = net(batch.support_x, batch.support_y, batch.query_x, "regression")
        loss = blackbox_losses(out, batch.query_y, "regression", net.ways, net.y_dim, net.predict_variance)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, missing
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses  # 0.25, 0.27, 0.10 of the first loss


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_learner_outputs_are_its_network_outputs(aggregator):
    """``BlackBoxAdaptation(...)(batch)`` is its ``network`` called on the batch, and a network built alone with
    the same seed and options is the same network: same outputs, and it loads the learner's state_dict."""
    torch.manual_seed(0)
    learner = BlackBoxAdaptation(Conv4(embed_only=True, hidden=8, image_size=16), **conv_options(aggregator))
    learner = learner.double()
    torch.manual_seed(0)
    alone = BlackBoxNetwork(Conv4(embed_only=True, hidden=8, image_size=16), **conv_options(aggregator)).double()
    batch = images()
    out = learner(batch)
    assert out.shape == (2, 6, 5) and torch.isinf(out[..., 3:]).all() and torch.isfinite(out[..., :3]).all()
    assert torch.equal(learner.network(batch.support_x, batch.support_y, batch.query_x, "classification"), out)
    assert torch.equal(alone(batch.support_x, batch.support_y, batch.query_x), out)
    torch.nn.init.zeros_(alone.predictor[0].weight)
    alone.load_state_dict(learner.state_dict())
    assert torch.equal(alone(batch.support_x, batch.support_y, batch.query_x), out)
    torch.testing.assert_close(learner.task_vector(batch.support_x, batch.support_y),
                               alone.task_vector(batch.support_x, batch.support_y), atol=0, rtol=0)


def test_state_dict_names_are_those_of_earlier_checkpoints():
    """The learner registers the network's modules under their own names: parameter and state_dict names did not
    change (no ``network.`` prefix), so earlier checkpoints load; the network's names are the same."""
    torch.manual_seed(0)
    learner = BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, aggregator="attention", **SMALL)
    assert list(learner.state_dict()) == ATTENTION_KEYS == list(learner.network.state_dict())
    assert [n for n, _ in learner.named_parameters()] == ATTENTION_KEYS
    assert learner.encoder is learner.network.encoder and learner.pair_net is learner.network.pair_net
    old = {k: torch.full_like(v, 0.25) for k, v in learner.state_dict().items()}  # an earlier checkpoint's weights
    learner.load_state_dict(old)
    assert all((p == 0.25).all() for p in learner.network.parameters())


def test_the_network_follows_the_learner_through_dtype_copies_and_modes():
    torch.manual_seed(0)
    learner = BlackBoxAdaptation(MLP(out_features=8, hidden=(8,)), feature_dim=8, aggregator="sequence", **SMALL)
    learner.double()
    assert all(p.dtype == torch.float64 for p in learner.network.parameters())
    twin = copy.deepcopy(learner)
    assert twin.network is not learner.network and twin.network.predictor is twin.predictor
    assert twin.network.predictor.state_dict().keys() == learner.predictor.state_dict().keys()
    batch = TaskBatch(*(t.double() for t in sinusoids(2)))
    assert torch.equal(twin(batch), learner(batch))
    learner.eval()
    assert not learner.network.training and not learner.network.sequence.training
    learner.train()
    assert learner.network.training and learner.network.sequence.training


def test_losses_are_those_of_torch_in_at_least_float32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    logits[..., 3:] = float("-inf")  # 3-way tasks of a 5-way network
    labels = torch.randint(0, 3, (2, 4), generator=g)
    losses, predictions = blackbox_losses(logits.bfloat16(), labels, "classification", 5, 1, False)
    wide = logits.bfloat16().float()
    assert losses.dtype == torch.float32 and predictions.dtype == torch.bfloat16
    torch.testing.assert_close(losses, torch.stack([F.cross_entropy(wide[t], labels[t]) for t in range(2)]))
    out, target = torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 4, 2, dtype=torch.float64)
    nll, mean = blackbox_losses(out, target, "regression", 5, 2, True)
    var = F.softplus(out[..., 2:4]) + 1e-3
    assert torch.equal(mean, out[..., :2]) and torch.equal(gaussian_outputs(out, 2, True)[1], var)
    torch.testing.assert_close(nll, (0.5 * (var.log() + (mean - target) ** 2 / var)).flatten(1).mean(1))
    mse, _ = blackbox_losses(out, target, "regression", 5, 2, False)
    torch.testing.assert_close(mse, ((out[..., :2] - target) ** 2).flatten(1).mean(1))
    assert gaussian_outputs(out, 2, False)[1] is None


def test_bad_arguments_and_tasks():
    encoder = MLP(out_features=8)
    with pytest.raises(ValueError, match="encoder_tasks must be 'auto', 'all' or an integer >= 1, got 'some'"):
        BlackBoxNetwork(encoder, feature_dim=8, encoder_tasks="some")
    with pytest.raises(ValueError, match="hidden=30 must be divisible by heads=4"):
        BlackBoxNetwork(encoder, feature_dim=8, hidden=30)
    with pytest.raises(ValueError, match="feature_dim must be given"):
        BlackBoxNetwork(encoder)
    with pytest.raises(ValueError, match="layers must be an integer >= 1, got 0"):
        BlackBoxNetwork(encoder, feature_dim=8, layers=0)
    net = BlackBoxNetwork(MLP(out_features=8), feature_dim=8, ways=3)
    x = torch.randn(1, 4, 1)
    with pytest.raises(ValueError, match="task_type must be one of \\['classification', 'regression'\\]"):
        net(x, torch.randn(1, 4, 1), x, "ranking")
    with pytest.raises(ValueError, match="a task with 4 ways cannot be answered. Use tasks with ways <= 3"):
        net(x, torch.arange(4)[None], x)
    with pytest.raises(ValueError, match="regression targets have 2 values, but y_dim=1"):
        net(x, torch.randn(1, 4, 2), x)
