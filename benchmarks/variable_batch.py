"""Variable-size episodes (Meta-Dataset, issue 21): is a padded batch with masks or a ragged one faster, for ProtoNet's
encoder calls and for MAML's loop and ``vmap``?

    python benchmarks/variable_batch.py [--quick] [--repeats 3] [--markdown]

Episodes come from ``lightning_meta.data.metadataset.sample_episode`` over a fake split of 200 classes with 20 random
1x28x28 images each (Omniglot's shape): 5..50 ways (``max_ways_upper_bound=50``, the paper's) and a capped variant
(``max_ways_upper_bound=20``); 10 queries per class, imbalanced support sets of up to 10 per class. Network: Conv-4
(64 filters, BatchNorm with batch statistics, channels-last), as a functional forward so that its BatchNorm can be told
which rows are real. Every repeat draws a fresh meta-batch (new shapes, as in training, so no form lives off oneDNN
primitives cached for one shape); the forms run on it once each, one after another, in an order rotated every repeat,
and the table gives the median time over repeats and the median (and range) of the per-repeat ratios to the reference,
the per-task ragged loop. This machine is shared: read the ratios, not the seconds.

The forms (the meta-batch's support and query sets are padded to its largest ones, masks mark the real rows):

ProtoNet (forward + backward of the loss: prototypes of the classes present, cross-entropy over real queries)
  * ``ragged_loop``: a list of per-task tensors, one encoder call per task (support + query), real rows only. The
    reference: each task's BatchNorm statistics are its own, as ``ProtoNet.embed`` computes them.
  * ``ragged_loop_elementary_bn``: the same with BatchNorm from elementary ops (what masking needs): its price alone.
  * ``padded_loop_real_rows``: the padded batch, sliced to each task's real rows before its encoder call: the very
    calls of ``ragged_loop`` on views (checked, not timed).
  * ``padded_loop``: one encoder call per task on its padded rows, BatchNorm statistics masked to the real rows.
  * ``padded_one_call``: one encoder call over ``[T * (S_max + Q_max), ...]``, BatchNorm masked per task.
  * ``ragged_concat_segment_bn``: every task's real rows in one encoder call, split back by sizes, BatchNorm per task
    segment (one fused call per segment).
  * ``ragged_concat``: the same call with a plain BatchNorm, pooled over the meta-batch (not each task's own
    statistics); and ``padded_loop_plain_bn``, ``padded_one_call_plain_bn``: plain BatchNorm over padded rows. Inexact:
    checked for their deviation, not timed.
  * ``torch.nested`` (jagged layout): probed, not timed, unless Conv-4 runs on it (see ``nested`` in the JSON).

MAML (1 inner step, lr 0.1, a head of 50 outputs with the logits of absent classes masked; package's
``task_objective``; meta-gradient of the mean query loss by ``torch.autograd.grad``), first- and second-order:
  * ``loop_ragged``: a Python loop over per-task tensors at their own sizes (fused BatchNorm, exact per task).
  * ``loop_padded``: the same loop over padded tasks with masks (masked elementary BatchNorm, the per-task ops
    ``vmap_padded`` maps): padding and masking without ``vmap``.
  * ``vmap_padded``: ``torch.func.vmap`` over the padded tasks (``vmap`` needs equal shapes, so it must pad), masked
    BatchNorm from elementary ops (the fused kernel's double backward is wrong under ``vmap``; see docs/benchmarks.md).

Before timing, float64 checks on a tiny meta-batch with *poisoned* padding (random values of scale 100, labels of
class 0) assert that every exact form gives the loss and gradients of the per-task ragged computation (relative
difference < 1e-9), with BatchNorm in eval mode (running statistics: every form must agree) and in training mode
(batch statistics: the forms that mask or segment BatchNorm must agree). The forms with plain BatchNorm over padded or
pooled rows are measured, not asserted: their loss and gradient deviations are saved, at the tiny size with zero
padding (what a collate writes) and at the timed sizes (float32, first repeat; float32 gradients of this random-data
Conv-4 are themselves 1e-3..1e-2 off float64, for fused and elementary BatchNorm alike, so read the loss column there).

Memory: the bytes autograd saves for backward per encoded row, per form (``saved_tensors_hooks`` on a small meta-batch;
``vmap`` refuses those hooks, so ``vmap_padded`` is given ``loop_padded``'s per-row bytes: the same per-task ops), times
the rows each form encodes: the autograd graph a training step holds before its backward.

Saves ``benchmarks/results/variable_batch.json``; ``--markdown`` prints the docs table from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from common import RESULTS, save
from torch import Tensor
from torch.func import vmap

from lightning_meta import ProtoNet, TaskBatch
from lightning_meta.data.metadataset import EpisodeSampling, sample_episode
from lightning_meta.data.seeding import task_generator
from lightning_meta.functional import prototypical_logits, task_objective
from lightning_meta.models import Conv4

CLASSES, IMAGES_PER_CLASS, SIDE, HEAD, INNER_LR, EPS = 200, 20, 28, 50, 0.1, 1e-5
Params = dict[str, Tensor]
Norm = Callable[[Tensor, int, Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------------------- episodes
@dataclass
class Task:
    """One episode at its own size: ``support_x [S, 1, H, W]``, ``support_y [S]``, ``query_x [Q, ...]``, ``query_y``."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int


@dataclass
class Padded:
    """The same tasks padded to the meta-batch's largest support and query sets; masks mark the real rows."""

    support_x: Tensor  # [T, S_max, 1, H, W]
    support_y: Tensor  # [T, S_max] (padding: class 0)
    support_mask: Tensor  # [T, S_max] bool
    query_x: Tensor
    query_y: Tensor
    query_mask: Tensor
    ways: list[int]


def draw_tasks(images: Tensor, sampling: EpisodeSampling, tasks: int, seed: int, dtype=torch.float32) -> list[Task]:
    """``tasks`` Meta-Dataset episodes of ``images [classes, n, 1, H, W]``, each a function of ``(seed, index)``."""
    out = []
    for index in range(tasks):
        g = task_generator(seed, "train", 0, index)
        d = sample_episode([images.shape[1]] * images.shape[0], sampling, g)
        sx, sy, qx, qy = [], [], [], []
        for label, (c, k) in enumerate(zip(d.classes, d.support_counts)):
            pick = torch.randperm(images.shape[1], generator=g)[: k + d.query_count]
            sx.append(images[c, pick[:k]])
            qx.append(images[c, pick[k:]])
            sy.append(torch.full((k,), label))
            qy.append(torch.full((d.query_count,), label))
        out.append(Task(nhwc(torch.cat(sx).to(dtype)), torch.cat(sy), nhwc(torch.cat(qx).to(dtype)), torch.cat(qy),
                        d.ways))
    return out


def nhwc(x: Tensor) -> Tensor:
    """A copy of ``x [..., C, H, W]`` with true NHWC strides (with one channel ``.contiguous(channels_last)`` keeps
    NCHW strides; see ``lightning_meta.data.layout``)."""
    *lead, c, h, w = x.shape
    perm = [*range(len(lead)), len(lead) + 1, len(lead) + 2, len(lead)]
    back = [*range(len(lead)), len(lead) + 2, len(lead), len(lead) + 1]
    return x.new_empty((*lead, h, w, c)).copy_(x.permute(perm)).permute(back)


def pad(tasks: list[Task], poison: float = 0.0, seed: int = 0) -> Padded:
    """Pad ``tasks`` into one batch; padding inputs are 0, or ``poison * N(0, 1)`` to check that none of it counts."""
    g = torch.Generator().manual_seed(seed)

    def stack(xs: list[Tensor], ys: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        m = max(len(y) for y in ys)
        x = torch.zeros((len(xs), m, *xs[0].shape[1:]), dtype=xs[0].dtype)
        if poison:
            x.normal_(generator=g).mul_(poison)
        y = torch.zeros((len(ys), m), dtype=torch.long)
        mask = torch.zeros((len(ys), m), dtype=torch.bool)
        for t, (xt, yt) in enumerate(zip(xs, ys)):
            x[t, : len(yt)], y[t, : len(yt)], mask[t, : len(yt)] = xt, yt, True
        return nhwc(x), y, mask

    s = stack([t.support_x for t in tasks], [t.support_y for t in tasks])
    q = stack([t.query_x for t in tasks], [t.query_y for t in tasks])
    return Padded(*s, *q, [t.ways for t in tasks])


# ------------------------------------------------------------------------------------------------ Conv-4, functionally
def conv4(params: Params, x: Tensor, norm: Norm) -> Tensor:
    """``Conv4``'s forward with ``params`` (its ``named_parameters``) and ``norm(x, layer, weight, bias)`` in place of
    each BatchNorm; ``[N, 64]`` features, or logits when ``params`` hold a head."""
    for i in range(4):
        x = F.conv2d(x, params[f"features.{i}.0.weight"], params[f"features.{i}.0.bias"], padding=1)
        x = norm(x, i, params[f"features.{i}.1.weight"], params[f"features.{i}.1.bias"])
        x = F.relu(F.max_pool2d(x, 2))
    x = x.flatten(1)
    return F.linear(x, params["head.weight"], params["head.bias"]) if "head.weight" in params else x


def batch_stats(x: Tensor, i: int, w: Tensor, b: Tensor) -> Tensor:
    """BatchNorm with the statistics of all rows of the call (a plain ``BatchNorm2d`` in training mode)."""
    return F.batch_norm(x, None, None, w, b, True, 0.0, EPS)


def running_stats(stats: list[tuple[Tensor, Tensor]]) -> Norm:
    """BatchNorm in eval mode (fixed running statistics): an affine map per channel, no row depends on another."""
    return lambda x, i, w, b: F.batch_norm(x, stats[i][0], stats[i][1], w, b, False, 0.0, EPS)


def masked_stats(mask: Tensor) -> Norm:
    """BatchNorm whose statistics come from the real rows of each task only: ``x [T*M, C, H, W]``, ``mask [T, M]``
    (or ``[M]``: one task, e.g. under ``vmap``). Elementary ops: right double backward under ``vmap`` too."""
    mask = mask if mask.dim() == 2 else mask[None]

    def norm(x: Tensor, i: int, w: Tensor, b: Tensor) -> Tensor:
        t, m = mask.shape
        xv = x.view(t, m, *x.shape[1:])
        keep = mask.to(x.dtype)[:, :, None, None, None]
        count = keep.sum(1, keepdim=True) * (x.shape[2] * x.shape[3])
        mean = (xv * keep).sum((1, 3, 4), keepdim=True) / count
        centered = xv - mean
        var = (centered.square() * keep).sum((1, 3, 4), keepdim=True) / count
        y = centered * torch.rsqrt(var + EPS) * w.view(1, 1, -1, 1, 1) + b.view(1, 1, -1, 1, 1)
        y = y.reshape(x.shape)
        # several tasks in one call: the 5-D ops leave NCHW strides, which would make the next layers run slower NCHW
        # kernels (one task, as under vmap, keeps NHWC; vmap refuses this call)
        return y.contiguous(memory_format=torch.channels_last) if t > 1 else y

    return norm


def segment_stats(sizes: list[int]) -> Norm:
    """BatchNorm with each segment's own statistics (rows ``x[:sizes[0]]``, then the next ``sizes[1]``, ...): one fused
    ``batch_norm`` per segment."""
    return lambda x, i, w, b: torch.cat([batch_stats(part, i, w, b) for part in x.split(sizes)])


# --------------------------------------------------------------------------------------------------------- ProtoNet
def ragged_loss(embeddings: list[Tensor], tasks: list[Task]) -> Tensor:
    """Mean over tasks of the mean query cross-entropy, each task at its own size (the package's
    ``prototypical_logits``: prototypes of the task's ``ways`` classes)."""
    losses = []
    for e, t in zip(embeddings, tasks):
        s = len(t.support_y)
        logits = prototypical_logits(e[None, :s], t.support_y[None], e[None, s:], t.ways)[0]
        losses.append(F.cross_entropy(logits, t.query_y))
    return torch.stack(losses).mean()


def padded_loss(es: Tensor, eq: Tensor, p: Padded) -> Tensor:
    """The same loss on padded embeddings ``[T, S_max, D]``, ``[T, Q_max, D]``: padding rows are zeroed (``where``,
    so not even a non-finite value reaches the sums), absent classes get no prototype and a masked logit, padded
    queries weigh 0."""
    ways = max(p.ways)
    es = torch.where(p.support_mask[..., None], es, 0.0)
    eq = torch.where(p.query_mask[..., None], eq, 0.0)
    one_hot = F.one_hot(p.support_y, ways).to(es.dtype) * p.support_mask[..., None]
    counts = one_hot.sum(1)  # [T, ways]; 0 for a class the task does not have
    prototypes = one_hot.transpose(1, 2) @ es / counts.clamp_min(1)[..., None]
    logits = -(eq[:, :, None, :] - prototypes[:, None, :, :]).pow(2).sum(-1)
    logits = logits.masked_fill(counts[:, None, :] == 0, torch.finfo(logits.dtype).min / 2)
    ce = F.cross_entropy(logits.flatten(0, 1), p.query_y.flatten(), reduction="none").view(p.query_y.shape)
    keep = p.query_mask.to(ce.dtype)
    return ((ce * keep).sum(1) / keep.sum(1)).mean()


def protonet_variants(norm_eval: Norm | None = None) -> dict[str, Callable[[Params, list[Task], Padded], Tensor]]:
    """ProtoNet loss of a meta-batch, one function per form. ``norm_eval``: BatchNorm in eval mode for every form
    (all must then agree); by default BatchNorm uses batch statistics as each form computes them."""
    def pick(default: Norm) -> Norm:
        return norm_eval if norm_eval is not None else default

    def ragged_loop(elementary: bool):
        def run(params, tasks, p):
            xs = [torch.cat([t.support_x, t.query_x]) for t in tasks]
            return ragged_loss([conv4(params, x, pick(masked_stats(torch.ones(len(x), dtype=torch.bool))
                                                      if elementary else batch_stats)) for x in xs], tasks)
        return run

    def padded_loop_real_rows(params, tasks, p):
        sizes = [(int(p.support_mask[t].sum()), int(p.query_mask[t].sum())) for t in range(len(p.ways))]
        embeddings = [conv4(params, torch.cat([p.support_x[t, :s], p.query_x[t, :q]]), pick(batch_stats))
                      for t, (s, q) in enumerate(sizes)]
        return ragged_loss(embeddings, tasks)

    def per_task_padded(masked: bool):
        def run(params, tasks, p):
            s = p.support_x.shape[1]
            x, mask = nhwc(torch.cat([p.support_x, p.query_x], 1)), torch.cat([p.support_mask, p.query_mask], 1)
            e = torch.stack([conv4(params, x[t], pick(masked_stats(mask[t]) if masked else batch_stats))
                             for t in range(len(x))])
            return padded_loss(e[:, :s], e[:, s:], p)
        return run

    def padded_one_call(masked: bool):
        def run(params, tasks, p):
            s = p.support_x.shape[1]
            x, mask = torch.cat([p.support_x, p.query_x], 1), torch.cat([p.support_mask, p.query_mask], 1)
            rows = nhwc(x.flatten(0, 1))  # flatten's view of one channel forgets NHWC strides: copy into them
            e = conv4(params, rows, pick(masked_stats(mask) if masked else batch_stats)).view(*x.shape[:2], -1)
            return padded_loss(e[:, :s], e[:, s:], p)
        return run

    def ragged_concat(segmented: bool):
        def run(params, tasks, p):
            parts = [torch.cat([t.support_x, t.query_x]) for t in tasks]
            sizes = [len(x) for x in parts]
            e = conv4(params, torch.cat(parts), pick(segment_stats(sizes) if segmented else batch_stats))
            return ragged_loss(list(e.split(sizes)), tasks)
        return run

    return {"ragged_loop": ragged_loop(False), "ragged_loop_elementary_bn": ragged_loop(True),
            "padded_loop_real_rows": padded_loop_real_rows,
            "padded_loop": per_task_padded(True), "padded_one_call": padded_one_call(True),
            "ragged_concat": ragged_concat(False), "ragged_concat_segment_bn": ragged_concat(True),
            # plain BatchNorm over padded rows: inexact, checked for its deviation only
            "padded_loop_plain_bn": per_task_padded(False), "padded_one_call_plain_bn": padded_one_call(False)}


PROTONET_TIMED = ("ragged_loop", "ragged_loop_elementary_bn", "padded_loop", "padded_one_call",
                  "ragged_concat_segment_bn")
PROTONET_EXACT = ("ragged_loop_elementary_bn", "padded_loop_real_rows", "padded_loop", "padded_one_call",
                  "ragged_concat_segment_bn")


# ------------------------------------------------------------------------------------------------------------- MAML
class RaggedLoss:
    """MAML's task loss at a task's own size: the first ``ways`` logits of the 50-way head, fused BatchNorm."""

    def __init__(self, ways: int, norm: Norm = batch_stats) -> None:
        self.ways, self.norm = ways, norm

    def at_step(self, k: int) -> RaggedLoss:
        return self

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        out = conv4(params, x, self.norm)
        return F.cross_entropy(out[:, : self.ways], y), out


class MaskedLoss:
    """MAML's task loss on a padded task: ``y [M, 2]`` packs (label, real); logits of classes absent from the real
    rows are masked, BatchNorm's statistics come from the real rows (``masked_bn=False``: from all rows), and the
    mean cross-entropy runs over the real rows only. Shapes do not depend on the data, so ``vmap`` maps it."""

    def __init__(self, masked_bn: bool = True, norm: Norm | None = None) -> None:
        self.masked_bn, self.norm = masked_bn, norm

    def at_step(self, k: int) -> MaskedLoss:
        return self

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        label, real = y[:, 0], y[:, 1].bool()
        norm = self.norm or masked_stats(real if self.masked_bn else torch.ones_like(real))
        out = conv4(params, torch.where(real[:, None, None, None], x, 0.0) if self.norm else x, norm)
        keep = real.to(out.dtype)
        classes = torch.arange(out.shape[-1], device=out.device)
        present = ((label[:, None] == classes) & real[:, None]).any(0)  # not one_hot: it reads values, vmap cannot
        logits = out.masked_fill(~present, torch.finfo(out.dtype).min / 2)
        ce = F.cross_entropy(logits, label, reduction="none")
        return (ce * keep).sum() / keep.sum(), out


def maml_variants(first_order: bool, norm_eval: Norm | None = None, masked_bn: bool = True
                  ) -> dict[str, Callable[[Params, list[Task], Padded], Tensor]]:
    """MAML's mean query loss of a meta-batch (1 inner step) per form; ``norm_eval`` as in ``protonet_variants``."""
    def lrs(params: Params) -> Tensor:
        return torch.full((1, len(params)), INNER_LR, dtype=next(iter(params.values())).dtype)

    def packed(y: Tensor, mask: Tensor) -> Tensor:
        return torch.stack([y, mask.long()], -1)

    def loop_ragged(params, tasks, p):
        losses = [task_objective(RaggedLoss(t.ways, norm_eval or batch_stats), params, list(params), lrs(params),
                                 (t.support_x, t.support_y), (t.query_x, t.query_y), 1, first_order=first_order)[0]
                  for t in tasks]
        return torch.stack(losses).mean()

    def loop_padded(params, tasks, p):
        loss = MaskedLoss(masked_bn, norm_eval)
        losses = [task_objective(loss, params, list(params), lrs(params),
                                 (p.support_x[t], packed(p.support_y[t], p.support_mask[t])),
                                 (p.query_x[t], packed(p.query_y[t], p.query_mask[t])), 1, first_order=first_order)[0]
                  for t in range(len(p.ways))]
        return torch.stack(losses).mean()

    def vmap_padded(params, tasks, p):
        loss, names = MaskedLoss(masked_bn, norm_eval), list(params)

        def one(params, lrs, xs, ys, xq, yq):
            return task_objective(loss, params, names, lrs, (xs, ys), (xq, yq), 1, first_order=first_order,
                                  functional=True)[0]

        losses = vmap(one, in_dims=(None, None, 0, 0, 0, 0), randomness="same")(
            params, lrs(params), p.support_x, packed(p.support_y, p.support_mask), p.query_x,
            packed(p.query_y, p.query_mask))
        return losses.mean()

    return {"loop_ragged": loop_ragged, "loop_padded": loop_padded, "vmap_padded": vmap_padded}


# ----------------------------------------------------------------------------------------------------------- checks
def theta(model: torch.nn.Module, dtype=torch.float32) -> Params:
    """Leaf copies of ``model``'s parameters; 4-D conv weights in channels-last order."""
    out = {}
    for name, p in model.named_parameters():
        q = p.detach().to(dtype)
        q = q.contiguous(memory_format=torch.channels_last) if q.dim() == 4 else q.clone()
        out[name] = q.requires_grad_()
    return out


def loss_and_grads(fn, params: Params, tasks: list[Task], p: Padded) -> tuple[Tensor, list[Tensor]]:
    loss = fn(params, tasks, p)
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, list(params.values()))]


def deviation(ref: tuple[Tensor, list[Tensor]], got: tuple[Tensor, list[Tensor]]) -> dict[str, float]:
    """Relative difference of the loss and of the whole gradient (all parameters as one vector)."""
    g_ref, g = torch.cat([x.flatten() for x in ref[1]]), torch.cat([x.flatten() for x in got[1]])
    return {"loss": float((got[0] - ref[0]).abs() / ref[0].abs()),
            "grad": float((g - g_ref).norm() / g_ref.norm())}


def check(seed: int = 0) -> dict:
    """float64, a tiny meta-batch with poisoned padding: the exact forms equal the per-task ragged computation."""
    dtype, tol = torch.float64, 1e-9
    torch.manual_seed(seed)
    images = torch.rand(12, 8, 1, 16, 16, dtype=dtype)  # 16x16: the smallest Conv-4 takes (float64 convs are slow)
    sampling = EpisodeSampling(min_ways=2, max_ways_upper_bound=5, max_num_query=3, max_support_set_size=12,
                               max_support_size_contrib_per_class=4)
    tasks = draw_tasks(images, sampling, 3, seed=seed, dtype=dtype)
    p = pad(tasks, poison=100.0, seed=seed)
    assert (~p.support_mask).any() and (~p.query_mask).any(), "the check batch must have padding"
    encoder = Conv4(embed_only=True, hidden=8, image_size=16).double()
    classifier = Conv4(out_features=HEAD, hidden=8, image_size=16).double()
    report: dict = {"tasks": [{"ways": t.ways, "support": len(t.support_y), "query": len(t.query_y)} for t in tasks],
                    "padded": {"support": p.support_x.shape[1], "query": p.query_x.shape[1]}, "tolerance": tol}

    # the functional forward is Conv4's, and the reference loss is ProtoNet's objective task by task
    x = torch.cat([tasks[0].support_x, tasks[0].query_x])
    assert torch.allclose(conv4(theta(encoder, dtype), x, batch_stats), encoder.train()(x), rtol=0, atol=1e-12)
    # eval-mode BatchNorm's running statistics: those of all real rows (so that activations are not all dead)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one call sets them to that call's statistics
    encoder(torch.cat([torch.cat([t.support_x, t.query_x]) for t in tasks]))
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in encoder.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    learner = ProtoNet(Conv4(embed_only=True, hidden=8, image_size=16).double(), channels_last=False)
    learner.encoder.load_state_dict(encoder.state_dict())
    ours = protonet_variants()["ragged_loop"](theta(learner.encoder, dtype), tasks, p)
    package = torch.stack([learner.objective(TaskBatch(t.support_x[None], t.support_y[None], t.query_x[None],
                                                       t.query_y[None])).loss for t in tasks]).mean()
    assert torch.allclose(ours, package, rtol=tol, atol=0), (float(ours), float(package))

    def compare(variants: dict, params: Params, exact: tuple[str, ...], reference: str) -> dict[str, dict]:
        ref = loss_and_grads(variants[reference], params, tasks, p)
        assert all(g.isfinite().all() for g in ref[1]) and sum(float(g.norm()) for g in ref[1]) > 0, reference
        out = {}
        for name, fn in variants.items():
            if name == reference:
                continue
            out[name] = deviation(ref, loss_and_grads(fn, params, tasks, p))
            if name in exact:  # written so that a NaN fails too
                assert all(d < tol for d in out[name].values()), f"{name} differs from {reference}: {out[name]}"
        return out

    eval_norm = running_stats(stats)
    report["protonet_eval_bn"] = compare(protonet_variants(eval_norm), theta(encoder, dtype),
                                         tuple(protonet_variants()), "ragged_loop")
    report["protonet_train_bn"] = compare(protonet_variants(), theta(encoder, dtype), PROTONET_EXACT, "ragged_loop")
    for name in ("ragged_concat", "padded_loop_plain_bn", "padded_one_call_plain_bn"):  # the check has teeth
        assert report["protonet_train_bn"][name]["grad"] > 1e-6, name
    poisoned, p = p, pad(tasks)  # zero padding, as a collate writes it: what plain BatchNorm really does
    report["protonet_train_bn_zero_padding"] = compare(protonet_variants(), theta(encoder, dtype), PROTONET_EXACT,
                                                       "ragged_loop")
    p = poisoned
    for order, first_order in (("first_order", True), ("second_order", False)):
        report[f"maml_{order}_eval_bn"] = compare(maml_variants(first_order, eval_norm), theta(classifier, dtype),
                                                  ("loop_padded", "vmap_padded"), "loop_ragged")
        report[f"maml_{order}_train_bn"] = compare(maml_variants(first_order), theta(classifier, dtype),
                                                   ("loop_padded", "vmap_padded"), "loop_ragged")
        plain = compare(maml_variants(first_order, masked_bn=False), theta(classifier, dtype), (), "loop_ragged")
        report[f"maml_{order}_train_bn"].update({f"{k}_plain_bn": v for k, v in plain.items()})
        assert plain["vmap_padded"]["grad"] > 1e-6
        poisoned, p = p, pad(tasks)
        plain = compare(maml_variants(first_order, masked_bn=False), theta(classifier, dtype), (), "loop_ragged")
        report[f"maml_{order}_train_bn_zero_padding"] = {f"{k}_plain_bn": v for k, v in plain.items()}
        p = poisoned
    return report


def probe_nested() -> dict:
    """Does Conv-4 run on a jagged ``torch.nested`` tensor of per-task image sets?"""
    nt = torch.nested.nested_tensor([torch.rand(3, 1, SIDE, SIDE), torch.rand(5, 1, SIDE, SIDE)], layout=torch.jagged)
    params = theta(Conv4(embed_only=True, hidden=8))
    steps = {"conv2d": lambda x: F.conv2d(x, params["features.0.0.weight"], params["features.0.0.bias"], padding=1),
             "batch_norm (F.batch_norm)": lambda x: batch_stats(x, 0, params["features.0.1.weight"],
                                                                 params["features.0.1.bias"]),
             "BatchNorm2d module": lambda x: torch.nn.BatchNorm2d(8)(x),
             "max_pool2d": lambda x: F.max_pool2d(x, 2),
             "relu": F.relu}
    out, x = {"torch": torch.__version__}, nt
    for name, step in steps.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = step(x)
            out[name] = "ok"
            if name == "conv2d":
                ok = all(torch.allclose(a, steps["conv2d"](b)) for a, b in zip(y.unbind(), nt.unbind()))
                out[name] = "ok, equal to per-task calls" if ok else "runs, but differs from per-task calls"
                x = y
        except Exception as error:  # noqa: BLE001 - the probe reports whatever fails
            out[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    out["conv4_runs"] = all(v.startswith("ok") for k, v in out.items() if k not in ("torch", "BatchNorm2d module"))
    return out


# ----------------------------------------------------------------------------------------------------------- timing
def is_padded(name: str) -> bool:
    """Whether the form ``name`` runs the encoder on padded rows."""
    return name.startswith(("padded_loop", "padded_one_call", "loop_padded", "vmap_padded")) and \
        name != "padded_loop_real_rows"


def rows(name: str, tasks: list[Task], p: Padded) -> int:
    """Rows the form ``name`` encodes for the meta-batch (MAML: support and query rows, once each)."""
    if is_padded(name):
        return len(tasks) * (p.support_x.shape[1] + p.query_x.shape[1])
    return sum(len(t.support_y) + len(t.query_y) for t in tasks)


def saved_bytes(fn, params: Params, tasks: list[Task], p: Padded) -> int:
    """Bytes autograd saves for backward in ``fn``'s forward (distinct storages, the parameters not counted)."""
    seen = {q.untyped_storage().data_ptr() for q in params.values()}
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(params, tasks, p)
    return total


def run_setting(label: str, kind: str, ways: int, tasks_per_batch: int, repeats: int, images: Tensor,
                variants: dict, timed_names: tuple[str, ...], inexact: tuple[str, ...], model: torch.nn.Module,
                seed: int) -> dict:
    """Time the forms ``timed_names`` (the first is the reference) on ``repeats`` fresh meta-batches; run the
    ``inexact`` forms (plain BatchNorm over padded or pooled rows) once, on the first, for their deviation."""
    sampling = EpisodeSampling(max_ways_upper_bound=ways)
    params, names = theta(model), list(timed_names)
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    batches, float32_deviation = [], {}
    # warm-up (every form once on a small meta-batch, not timed), and each form's saved bytes per encoded row there
    warm = draw_tasks(images, EpisodeSampling(max_ways_upper_bound=10), 2, seed=10**6 + seed)
    warm_p = pad(warm)
    for name in names:
        loss_and_grads(variants[name], params, warm, warm_p)
    per_row = {n: saved_bytes(variants[n if n != "vmap_padded" else "loop_padded"], params, warm, warm_p)
               / rows(n, warm, warm_p) for n in names}
    for r in range(repeats):
        tasks = draw_tasks(images, sampling, tasks_per_batch, seed=seed * 1000 + r)
        p = pad(tasks)
        batches.append({"ways": [t.ways for t in tasks], "support": [len(t.support_y) for t in tasks],
                        "query": [len(t.query_y) for t in tasks], "support_max": p.support_x.shape[1],
                        "query_max": p.query_x.shape[1], "rows_real": rows(names[0], tasks, p),
                        "rows_padded": rows("padded_loop", tasks, p)})
        order = names[r % len(names):] + names[: r % len(names)]  # rotated: no form always runs first or last
        results = {}
        for name in order:
            start = time.perf_counter()
            results[name] = loss_and_grads(variants[name], params, tasks, p)
            times[name].append(time.perf_counter() - start)
        for name in names:
            ratios[name].append(times[name][-1] / times[names[0]][-1])
        if r == 0:
            float32_deviation = {n: deviation(results[names[0]], results[n]) for n in names[1:]}
            float32_deviation.update({n: deviation(results[names[0]], loss_and_grads(variants[n], params, tasks, p))
                                      for n in inexact})
        print(f"  {label} {r + 1}/{repeats}: ways {batches[-1]['ways']}, rows real {batches[-1]['rows_real']} "
              f"padded {batches[-1]['rows_padded']}; s: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names),
              flush=True)
    rows_median = {n: statistics.median(b["rows_padded" if is_padded(n) else "rows_real"] for b in batches)
                   for n in names}
    return {"kind": kind, "max_ways_upper_bound": ways, "tasks": tasks_per_batch, "repeats": repeats,
            "reference": names[0], "batches": batches, "seconds": times,
            "median_seconds": {n: statistics.median(v) for n, v in times.items()},
            "median_ratio_vs_reference": {n: statistics.median(v) for n, v in ratios.items()},
            "ratio_range": {n: [min(v), max(v)] for n, v in ratios.items()},
            "rows_encoded_median": rows_median,
            "saved_bytes_per_row": per_row,
            "saved_mib_median_batch": {n: per_row[n] * rows_median[n] / 2**20 for n in names},
            # the protocol's largest episode at these ways: a 500-example support set (classes with enough images)
            # and 10 queries per class; ragged forms hold that only if every task is that large, padded forms as
            # soon as one task is
            "saved_mib_worst_case": {n: per_row[n] * tasks_per_batch * (500 + 10 * ways) / 2**20 for n in names},
            "float32_deviation_first_repeat": float32_deviation}


# ------------------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller meta-batches and 2 repeats (about a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="meta-batches per setting (default 3; quick: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the docs table from the saved JSON and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((RESULTS / "variable_batch.json").read_text())))
        return
    repeats = args.repeats or (2 if args.quick else 3)
    started, load_before = time.perf_counter(), os.getloadavg()
    checks = check(args.seed)
    print(f"checks passed in {time.perf_counter() - started:.0f}s (float64, poisoned padding): every exact form "
          "equals the per-task ragged computation")
    nested = probe_nested()
    print(f"torch.nested (jagged) through Conv-4: {nested}")
    torch.manual_seed(args.seed)
    images = torch.rand(CLASSES, IMAGES_PER_CLASS, 1, SIDE, SIDE)
    encoder, classifier = Conv4(embed_only=True, hidden=64), Conv4(out_features=HEAD, hidden=64)
    if args.quick:
        settings = [("protonet", 20, 4), ("maml_first_order", 20, 2), ("maml_second_order", 20, 2)]
    else:
        settings = [("protonet", 50, 4), ("protonet", 20, 8), ("maml_first_order", 20, 4),
                    ("maml_second_order", 20, 4)]
    results = {}
    for i, (kind, ways, tasks) in enumerate(settings):
        label = f"{kind}_ways{ways}_tasks{tasks}"
        if kind == "protonet":
            variants, timed_names, model = protonet_variants(), PROTONET_TIMED, encoder
            inexact = ("ragged_concat", "padded_loop_plain_bn", "padded_one_call_plain_bn")
        else:
            first_order = kind == "maml_first_order"
            variants = {**maml_variants(first_order),
                        "loop_padded_plain_bn": maml_variants(first_order, masked_bn=False)["loop_padded"]}
            timed_names, inexact, model = ("loop_ragged", "loop_padded", "vmap_padded"), ("loop_padded_plain_bn",), \
                classifier
        results[label] = run_setting(label, kind, ways, tasks, repeats, images, variants, timed_names, inexact, model,
                                     args.seed + i)
    payload = {
        "setting": f"fake split of {CLASSES} classes x {IMAGES_PER_CLASS} random 1x{SIDE}x{SIDE} images; "
                   "sample_episode (Meta-Dataset defaults but max_ways_upper_bound); Conv-4 (64 filters, BatchNorm "
                   f"with batch statistics, channels-last); MAML: 1 inner step, lr {INNER_LR}, {HEAD}-way head with "
                   "masked logits",
        "quick": args.quick, "repeats": repeats, "seed": args.seed,
        "timing": "each repeat a fresh meta-batch (new shapes, as every variable meta-batch in training); the forms "
                  "run one after another on it, once each, in an order rotated per repeat; median of the repeats' "
                  "times and of the per-repeat ratios to the reference (the first form)",
        "memory": "bytes autograd saves per encoded row (saved_tensors_hooks, small meta-batch; vmap_padded: "
                  "loop_padded's) x rows encoded; worst case: every task at max ways (500 + 500 rows at 50 ways)",
        "load_average_before_after": [load_before, os.getloadavg()],
        "checks": checks, "nested": nested, "results": results,
    }
    payload["seconds_total"] = time.perf_counter() - started
    print(markdown(payload))
    save("variable_batch", payload)


def markdown(payload: dict) -> str:
    """The docs tables: time (per setting and form: rows encoded, median seconds, median ratio to the reference and
    its range over repeats, saved MiB), then what the forms compute (deviations from the reference)."""
    lines = ["| setting | form | rows encoded | median s | x reference (range) | saved MiB: batch / worst case |",
             "|---|---|---|---|---|---|"]
    for label, r in payload["results"].items():
        for name, seconds in r["median_seconds"].items():
            low, high = r["ratio_range"][name]
            lines.append(f"| {label} | {name} | {r['rows_encoded_median'][name]:.0f} | {seconds:.2f} | "
                         f"{r['median_ratio_vs_reference'][name]:.2f} ({low:.2f}-{high:.2f}) | "
                         f"{r['saved_mib_median_batch'][name]:.0f} / {r['saved_mib_worst_case'][name]:.0f} |")
    lines += ["", "| setting | form | loss dev. | gradient dev. |", "|---|---|---|---|"]
    for label, r in payload["results"].items():
        for name, dev in r["float32_deviation_first_repeat"].items():
            lines.append(f"| {label} (float32) | {name} | {dev['loss']:.0e} | {dev['grad']:.0e} |")
    checks = payload["checks"]
    for key, title in (("protonet_train_bn_zero_padding", "tiny, float64, zero padding"),
                       ("maml_first_order_train_bn_zero_padding", "tiny, float64, zero padding"),
                       ("maml_second_order_train_bn_zero_padding", "tiny, float64, zero padding")):
        for name, dev in checks.get(key, {}).items():
            lines.append(f"| {key.removesuffix('_train_bn_zero_padding')} ({title}) | {name} | {dev['loss']:.0e} | "
                         f"{dev['grad']:.0e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
