"""ResNet-12 and DropBlock: architecture, DropBlock statistics, MAML meta-gradients against an unrolled oracle on a
deep copy of the module, ProtoNet logits by hand, Lightning fits, channels-last, and Conv4 on 3-channel 84x84."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import tiny_trainer
from torch.func import functional_call, vmap
from torch.utils.data import TensorDataset

from lightning_meta import MAML, BlackBoxAdaptation, ClassificationTasks, EpisodicDataModule, ProtoNet, TaskBatch
from lightning_meta.functional import select_adapted
from lightning_meta.models import Conv4, DropBlock, ResNet12

TINY = (3, 4, 5, 6)  # distinct widths: a wrong wiring shows as a shape error


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one intra-op thread is as fast, and on a busy machine (other processes on the
    cores) a second thread's spin-waits made one test 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_resnet(out_features=3, drop_rate=0.0, image_size=16, seed=0, dtype=torch.float64, **kw) -> ResNet12:
    torch.manual_seed(seed)
    return ResNet12(out_features, channels=TINY, image_size=image_size, drop_rate=drop_rate, drop_block_size=2,
                    **kw).to(dtype)


def image_batch(tasks=2, ways=3, shots=1, queries=2, size=16, dtype=torch.float64, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.stack([torch.randperm(ways * shots, generator=g) % ways for _ in range(tasks)])
    query_y = torch.stack([torch.randperm(ways * queries, generator=g) % ways for _ in range(tasks)])
    return TaskBatch(torch.rand(tasks, ways * shots, 3, size, size, generator=g, dtype=dtype), support_y,
                     torch.rand(tasks, ways * queries, 3, size, size, generator=g, dtype=dtype), query_y)


# ------------------------------------------------------------------------------------------------ architecture
def leaky(x):
    return F.leaky_relu(x, 0.1)


def batch_stat_norm(h, bn):
    """BatchNorm with this batch's statistics (biased variance), by hand."""
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (h - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


def resnet12_by_hand(net: ResNet12, x: torch.Tensor) -> torch.Tensor:
    """MetaOptNet's BasicBlock written out with F.conv2d: three 3x3 conv-BN layers with LeakyReLU(0.1) after the
    first two, a 1x1 conv-BN shortcut added before the third LeakyReLU, 2x2 max-pool; global mean; linear head."""
    h = x
    for b in net.blocks:
        out = leaky(batch_stat_norm(F.conv2d(h, b.conv1.weight, padding=1), b.bn1))
        out = leaky(batch_stat_norm(F.conv2d(out, b.conv2.weight, padding=1), b.bn2))
        out = batch_stat_norm(F.conv2d(out, b.conv3.weight, padding=1), b.bn3)
        short = batch_stat_norm(F.conv2d(h, b.shortcut[0].weight), b.shortcut[1])
        h = F.max_pool2d(leaky(out + short), 2)
    z = h.mean(dim=(2, 3))
    return z @ net.head.weight.T + net.head.bias


def test_forward_equals_the_architecture_written_out():
    net = tiny_resnet().train()
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(net(x), resnet12_by_hand(net, x), rtol=1e-10, atol=1e-12)


def resnet12_parameter_count(widths=(64, 160, 320, 640), in_channels=3) -> int:
    count, previous = 0, in_channels
    for c in widths:
        count += 9 * previous * c + 2 * 9 * c * c + previous * c  # three 3x3 convs and the 1x1 shortcut, no bias
        count += 4 * 2 * c  # four BatchNorms, weight and bias
        previous = c
    return count


def test_shapes_feature_dim_and_the_published_parameter_count():
    net = ResNet12(embed_only=True)
    assert net.feature_dim == 640 and net.head is None
    count = sum(p.numel() for p in net.parameters())
    assert count == resnet12_parameter_count() and round(count / 1e6, 1) == 12.4  # MetaOptNet's "12.4M"
    assert ResNet12(embed_only=True, avg_pool=False).feature_dim == 640 * 5 * 5
    x = torch.rand(4, 3, 32, 32)
    small = dict(channels=(8, 16, 32, 64), image_size=32)
    assert ResNet12(out_features=7, **small)(x).shape == (4, 7)
    assert ResNet12(embed_only=True, **small)(x).shape == (4, 64)
    flat = ResNet12(embed_only=True, avg_pool=False, **small)
    assert flat.feature_dim == 64 * 2 * 2 and flat(x).shape == (4, flat.feature_dim)
    assert select_adapted(ResNet12(**small), "head") == ["head.weight", "head.bias"]  # ANIL adapts the head
    one_channel = ResNet12(in_channels=1, embed_only=True, channels=[2, 2, 2, 2], image_size=28)  # a YAML list
    assert one_channel(torch.rand(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=15), r"image_size \(four 2x2 max-poolings\) must be an integer >= 16, got 15"),
    (dict(channels=(64, 160, 320)), "channels must be 4 ints"),
    (dict(channels=(64, 160, 320, 640.0)), "channels must be 4 ints"),
    (dict(channels=(64, 0, 320, 640)), "channels must be 4 ints"),
    (dict(channels="64"), "channels must be 4 ints"),
    (dict(drop_rate=1.0), r"drop_rate must be a number in \[0, 1\)"),
    (dict(drop_rate=-0.1), r"drop_rate must be a number in \[0, 1\)"),
    (dict(drop_block_size=0), "drop_block_size must be an integer >= 1, got 0"),
    (dict(in_channels=0), "in_channels must be an integer >= 1, got 0"),
    (dict(out_features=0), "out_features must be an integer >= 1, got 0"),
    (dict(out_features=None), "out_features must be an integer >= 1, got None"),
    (dict(negative_slope=float("nan")), "negative_slope must be a finite number >= 0, got nan"),
    (dict(avg_pool="yes"), r"avg_pool must be one of \[True, False\], got 'yes'"),
])
def test_bad_arguments_are_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet12(**kwargs)


def test_dropblock_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"drop_rate must be a number in \[0, 1\)"):
        DropBlock(drop_rate=1.5)
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        DropBlock(block_size=0)
    with pytest.raises(ValueError, match=r"feature maps \[N, C, H, W\]"):
        DropBlock(0.1)(torch.ones(2, 3))


def test_built_from_a_cli_style_config():
    """What LightningCLI does with ``model: {class_path: lightning_meta.models.ResNet12, init_args: ...}``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--model", type=torch.nn.Module)
    config = parser.parse_string(
        "model:\n"
        "  class_path: lightning_meta.models.ResNet12\n"
        "  init_args: {channels: [8, 16, 32, 64], image_size: 32, drop_rate: 0.1, embed_only: true}\n")
    net = parser.instantiate_classes(config).model
    assert isinstance(net, ResNet12) and net.channels == (8, 16, 32, 64) and net.feature_dim == 64
    assert isinstance(net.blocks[3].drop, DropBlock) and isinstance(net.blocks[0].drop, torch.nn.Dropout)


# -------------------------------------------------------------------------------------------------- DropBlock
def expected_drop_fraction(rate: float, block: int, side: int) -> float:
    """Exact expected dropped fraction of a ``side x side`` map: cell ``(i, j)`` is covered by the blocks of
    ``n_i * n_j`` corners, each drawn with probability gamma, so it is dropped with ``1 - (1 - gamma)^(n_i n_j)``."""
    valid = side - block + 1
    gamma = rate / block**2 * side**2 / valid**2
    covers = [min(p, valid - 1) - max(0, p - block + 1) + 1 for p in range(side)]
    return sum(1 - (1 - gamma) ** (a * b) for a in covers for b in covers) / side**2


@pytest.mark.parametrize("block", [1, 3])
def test_dropped_fraction_matches_the_target_rate_in_expectation(block):
    torch.manual_seed(0)
    drop = DropBlock(drop_rate=0.1, block_size=block)
    y = drop(torch.ones(64, 16, 10, 10))
    per_map = (y == 0).double().mean(dim=(2, 3)).flatten()  # masks are independent across maps
    observed, stderr = float(per_map.mean()), float(per_map.std() / math.sqrt(per_map.numel()))
    exact = expected_drop_fraction(0.1, block, 10)
    assert abs(observed - exact) < 4 * stderr, (observed, exact, stderr)
    if block == 1:
        assert exact == pytest.approx(0.1)  # no overlaps: exactly the rate
    else:
        assert 0.09 < exact < 0.1  # gamma makes the expected count (overlaps counted) the rate; overlaps cost ~5%


def test_dropped_regions_are_whole_blocks():
    """Every dropped cell lies in a fully dropped ``block x block`` square inside the map: the dropped set equals
    its morphological opening by the square (erode to the block corners, dilate back)."""
    torch.manual_seed(1)
    block = 4
    y = DropBlock(drop_rate=0.15, block_size=block)(torch.ones(8, 4, 20, 20))
    dropped = (y == 0).double()
    assert 0.02 < float(dropped.mean()) < 0.3
    corners = -F.max_pool2d(-dropped, block, stride=1)  # 1 where the whole square from this corner is dropped
    reopened = F.max_pool2d(F.pad(corners, (block - 1,) * 4), block, stride=1)
    assert torch.equal(reopened, dropped)
    kept = y[y != 0]
    assert torch.allclose(kept, kept[0].expand_as(kept))  # one scale for the kept cells
    assert float(kept[0]) == pytest.approx(y.numel() / kept.numel())


def test_scaling_preserves_the_expected_activation_and_eval_is_identity():
    torch.manual_seed(2)
    drop = DropBlock(drop_rate=0.3, block_size=3)
    ones = torch.ones(4, 8, 12, 12)
    torch.testing.assert_close(drop(ones).sum(), ones.sum())  # kept cells scaled by count / count kept
    x = torch.rand(4, 8, 12, 12) + 0.5
    ratios = torch.stack([drop(x).mean() / x.mean() for _ in range(200)])
    assert abs(float(ratios.mean()) - 1.0) < 0.01
    assert float(ratios.std()) > 1e-3  # the draws do vary
    drop.eval()
    assert drop(x) is x
    assert DropBlock(drop_rate=0.0)(x) is x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dropblock_scale_is_right_in_half_precision_on_large_maps(dtype):
    """The count of kept cells is taken in float32: in float16 it would overflow (here 80 x 320 x 10 x 10 cells,
    MetaOptNet's third block on 5-way 15-query tasks) and zero the output."""
    torch.manual_seed(0)
    y = DropBlock(drop_rate=0.1, block_size=5)(torch.ones(80, 320, 10, 10, dtype=dtype))
    assert y.dtype == dtype and bool(torch.isfinite(y).all())
    assert float(y.double().mean()) == pytest.approx(1.0, rel=1e-2)


def test_resnet12_dropout_is_off_in_eval_mode_and_seeded_in_training():
    net = tiny_resnet(drop_rate=0.3, image_size=32, dtype=torch.float32)
    plain = tiny_resnet(drop_rate=0.0, image_size=32, dtype=torch.float32)
    plain.load_state_dict(net.state_dict())
    x = torch.rand(6, 3, 32, 32)
    net.eval(), plain.eval()
    torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
    net.train(), plain.train()
    torch.manual_seed(3)
    a = net(x)
    torch.manual_seed(3)
    b = functional_call(net, dict(net.named_parameters()), (x,))  # MAML's call: the same draws
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, plain(x))


def test_dropblock_under_vmap_same_and_different_randomness():
    drop = DropBlock(drop_rate=0.2, block_size=2)
    x = torch.ones(3, 4, 5, 8, 8)  # 3 vmapped "tasks"
    torch.manual_seed(0)
    same = vmap(drop, randomness="same")(x)
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2]) and bool((same[0] == 0).any())
    torch.testing.assert_close(same.sum(dim=(1, 2, 3, 4)), x.sum(dim=(1, 2, 3, 4)))  # per-task normalization
    different = vmap(drop, randomness="different")(x)
    assert not torch.equal(different[0], different[1])


# --------------------------------------------------------------------------------------------------------- MAML
def set_weights(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put (non-leaf) tensors where ``net``'s parameters were: plain attributes, as learn2learn's ``update_module``
    does, so that the forward is the module's own code with no ``torch.func``."""
    for name, w in weights.items():
        owner, _, leaf = name.rpartition(".")
        module = net.get_submodule(owner)
        module._parameters.pop(leaf, None)
        setattr(module, leaf, w)


def unrolled_meta_gradient(reference: torch.nn.Module, batch: TaskBatch, lr: float, steps: int,
                           channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Second-order MAML by explicit autograd on a deep copy of the original module (its BatchNorm in train mode:
    batch statistics, the transductive setting), tasks and forwards in MAML's order: the support forward of every
    step, then the query forward, task after task."""
    net = copy.deepcopy(reference).train()
    theta = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    layout = (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda x: x)
    losses = []
    for t in range(batch.num_tasks):
        fast = dict(theta)
        for _ in range(steps):
            set_weights(net, fast)
            loss = F.cross_entropy(net(layout(batch.support_x[t])), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: w - lr * g for (n, w), g in zip(fast.items(), grads)}
        set_weights(net, fast)
        losses.append(F.cross_entropy(net(layout(batch.query_x[t])), batch.query_y[t]))
    meta_loss = torch.stack(losses).mean()
    return dict(zip(theta, torch.autograd.grad(meta_loss, list(theta.values()))))


def maml_gradient(maml: MAML, batch: TaskBatch) -> dict[str, torch.Tensor]:
    maml.zero_grad()
    maml.objective(batch).loss.backward()
    return {n.removeprefix("model."): p.grad.clone() for n, p in maml.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("channels_last", [False, True])
def test_maml_meta_gradient_equals_unrolled_autograd_on_a_deep_copy(channels_last):
    batch = image_batch()
    net = tiny_resnet()
    reference = copy.deepcopy(net)  # before MAML makes its BatchNorms transductive
    # inner_lr 0.25: the inner_lrs buffer starts in float32, where 0.3 would round (a 4e-7 relative difference)
    maml = MAML(net, inner_lr=0.25, inner_steps=2, channels_last=channels_last).double()
    assert len(maml.batch_norm_layers) == 16 and not any("running" in k for k in maml.state_dict())
    got = maml_gradient(maml, batch)
    oracle = unrolled_meta_gradient(reference, batch, 0.25, 2)
    assert set(got) == set(oracle)
    for name in oracle:
        torch.testing.assert_close(got[name], oracle[name], rtol=1e-7, atol=1e-10)
    assert all(float(g.abs().sum()) > 0 for g in got.values())


def test_maml_meta_gradient_with_dropout_and_dropblock_equals_the_oracle_under_the_same_seed():
    """The random masks are drawn from the global RNG inside MAML's functional call, one draw per forward, so
    the oracle (same seed, same order of forwards, same memory layout) sees the same masks."""
    batch = image_batch(size=32)
    net = tiny_resnet(drop_rate=0.3, image_size=32)
    reference = copy.deepcopy(net).to(memory_format=torch.channels_last)
    maml = MAML(net, inner_lr=0.25, inner_steps=2).double()  # channels-last (the default), as the oracle
    torch.manual_seed(5)
    got = maml_gradient(maml, batch)
    torch.manual_seed(5)
    oracle = unrolled_meta_gradient(reference, batch, 0.25, 2, channels_last=True)
    for name in oracle:
        torch.testing.assert_close(got[name], oracle[name], rtol=1e-7, atol=1e-10)
    torch.manual_seed(6)
    other = maml_gradient(maml, batch)
    assert not torch.allclose(other["head.weight"], got["head.weight"])  # the masks do matter


@pytest.mark.parametrize("hvp_method", ["autograd", "finite_difference"])
def test_hvp_meta_gradient_with_dropblock_equals_second_order_under_the_same_seed(hvp_method):
    """The HVP recurrence recomputes support forwards; it replays the recorded RNG state, so they draw the forward
    pass's masks (without the replay: 150% relative error with autograd HVPs, 1e15 with finite differences)."""
    batch = image_batch(size=32)
    grads = []
    for mode in ("second_order", "hvp"):
        maml = MAML(tiny_resnet(drop_rate=0.3, image_size=32), inner_lr=0.25, inner_steps=3, meta_gradient=mode,
                    hvp_method=hvp_method).double()
        torch.manual_seed(5)
        grads.append(maml_gradient(maml, batch))
        after = torch.rand(1)
    plain = MAML(tiny_resnet(drop_rate=0.3, image_size=32), inner_lr=0.25, inner_steps=3).double()
    torch.manual_seed(5)
    plain.objective(batch)
    assert torch.equal(torch.rand(1), after)  # the replays leave the global RNG where second_order leaves it
    tolerance = 1e-9 if hvp_method == "autograd" else 1e-6
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=tolerance, atol=tolerance * 1e-2)


def test_maml_evaluation_uses_batch_statistics():
    net = tiny_resnet()
    reference = copy.deepcopy(net).train()
    maml = MAML(net).eval()
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(maml(x), reference(x), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(maml(x)[:3], maml(x[:3]))  # an output depends on its batch


def test_maml_vectorized_equals_the_loop_and_runs_with_dropblock():
    batch = image_batch(tasks=3)
    grads = []
    for vectorize in (False, True):
        maml = MAML(tiny_resnet(), inner_lr=0.25, inner_steps=2, vectorize=vectorize).double()
        grads.append(maml_gradient(maml, batch))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-7, atol=1e-10)
    # with DropBlock: vmap draws one mask per forward for all tasks (randomness="same"); it runs and is finite
    maml = MAML(tiny_resnet(drop_rate=0.3, image_size=32), inner_lr=0.3, vectorize=True)
    dropped = maml_gradient(maml, image_batch(tasks=3, size=32))
    assert all(bool(torch.isfinite(g).all()) for g in dropped.values())


def random_image_tasks(size=32, classes=12, per_class=3) -> ClassificationTasks:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(classes * per_class, 3, size, size, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class)
    return ClassificationTasks(TensorDataset(x, y), ways=3, shots=1, queries=2, split_fractions=(0.5, 0.25, 0.25))


def fit_two_steps(learner: pl.LightningModule) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    dm = EpisodicDataModule(random_image_tasks(), meta_batch_size=2, train_episodes_per_epoch=4, val_episodes=0,
                            test_episodes=0)
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(learner, dm)
    assert trainer.global_step == 2
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    changed = [n for n, p in learner.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no parameter moved"
    return {n: p for n, p in learner.named_parameters() if n not in changed}


def test_maml_and_protonet_fit_two_steps_with_a_tiny_resnet12():
    torch.manual_seed(0)
    net = ResNet12(out_features=3, channels=(8, 16, 32, 64), image_size=32, drop_rate=0.1, drop_block_size=2)
    unchanged = fit_two_steps(MAML(net, inner_lr=0.1, inner_steps=1))
    assert not unchanged
    torch.manual_seed(0)
    encoder = ResNet12(embed_only=True, channels=(8, 16, 32, 64), image_size=32, drop_rate=0.1, drop_block_size=2)
    assert not fit_two_steps(ProtoNet(encoder))


# ------------------------------------------------------------------------------------- metric learners' encoder
def test_protonet_logits_equal_negative_squared_distances_to_embedding_means():
    batch = image_batch(tasks=2, ways=3, shots=2, queries=2)
    encoder = tiny_resnet(embed_only=True)
    reference = copy.deepcopy(encoder).train()
    logits = ProtoNet(encoder).train().objective(batch).query_outputs
    s = batch.support_x.shape[1]
    for t in range(batch.num_tasks):
        e = reference(torch.cat([batch.support_x[t], batch.query_x[t]]))  # one forward per task, as ProtoNet
        assert e.shape == (s + batch.query_x.shape[1], TINY[-1])
        protos = torch.stack([e[:s][batch.support_y[t] == k].mean(0) for k in range(3)])
        expected = -((e[s:, None, :] - protos[None]) ** 2).sum(-1)
        torch.testing.assert_close(logits[t], expected, rtol=1e-9, atol=1e-12)


def test_blackbox_reads_feature_dim_of_an_embedding_resnet12():
    encoder = tiny_resnet(embed_only=True, image_size=32, avg_pool=False)
    assert encoder.feature_dim == TINY[-1] * 2 * 2
    model = BlackBoxAdaptation(encoder, ways=3, task_dim=8, hidden=16).double()
    batch = image_batch(size=32)
    objective = model.objective(batch)
    assert objective.query_outputs.shape == (2, 6, 3) and torch.isfinite(objective.loss)


# ------------------------------------------------------------------------------------------------ memory layout
@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_channels_last_input_gives_the_nchw_output(drop_rate):
    """Train mode (batch statistics; DropBlock's masks do not depend on the layout, so DropBlock alone is on) and
    eval mode; the features stay channels-last through the blocks."""
    torch.manual_seed(0)
    net = ResNet12(out_features=5, channels=(8, 16, 32, 64), image_size=32, drop_rate=drop_rate, drop_block_size=2)
    for block in net.blocks[:2]:
        block.drop = torch.nn.Identity()  # torch's dropout masks follow the memory order: not layout-free
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.rand(6, 3, 32, 32)
    strides = []
    nhwc.blocks[3].register_forward_hook(
        lambda m, i, o: strides.append(o.is_contiguous(memory_format=torch.channels_last)))
    for mode in (True, False):
        net.train(mode), nhwc.train(mode)
        torch.manual_seed(1)
        a = net(x)
        torch.manual_seed(1)
        b = nhwc(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert strides == [True, True]


# -------------------------------------------------------------------------------------------------------- Conv4
def test_conv4_takes_three_channel_84px_images_and_a_maml_step_runs():
    torch.manual_seed(0)
    net = Conv4(out_features=5, in_channels=3, image_size=84)
    assert net.feature_dim == 1600
    maml = MAML(net, inner_lr=0.01, inner_steps=1)
    g = torch.Generator().manual_seed(0)
    labels = torch.randperm(5, generator=g)[None]
    batch = TaskBatch(torch.rand(1, 5, 3, 84, 84, generator=g), labels, torch.rand(1, 5, 3, 84, 84, generator=g),
                      labels)
    objective = maml.objective(batch)
    objective.loss.backward()
    assert torch.isfinite(objective.loss)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in maml.model.parameters())
