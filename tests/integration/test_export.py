"""Exporting an adapted learner: ``learner.adapt(...)`` returns a plain ``nn.Module`` that ``torch.export.export`` and
``torch.jit.trace`` capture for every learner and black-box aggregator (and a regression MAML); the captured program
answers the example queries and other queries of the same shape as the module does (the trace also other numbers of
queries), also with a dynamic number of queries (``torch.export.Dim``). ONNX
(``torch.onnx.export(..., dynamo=True)``, run by onnxruntime) is checked where ``onnx``, ``onnxscript`` and
``onnxruntime`` are installed (they are not dependencies of lightning-meta) and skipped, saying so, where not."""

from __future__ import annotations

import importlib.util
import io

import pytest
import torch

from lightning_meta import IMAML, MAML, BlackBoxAdaptation, ProtoNet, Reptile
from lightning_meta.models import MLP, Conv4

ATOL = 1e-5
AGGREGATORS = ("mean", "attention", "sequence", "snail")


def conv(**kw) -> Conv4:
    return Conv4(hidden=8, image_size=16, **kw)


#: each learner as ``adapt`` meets it: 3-way 2-shot image tasks (MAML's Conv4 with its default
#: ``batch_norm="transductive"``, ProtoNet's and the black-box encoders' with torch's BatchNorm), and a regression MAML
LEARNERS = {
    "MAML": lambda: MAML(conv(out_features=3), inner_lr=0.1, eval_inner_steps=2),
    "IMAML": lambda: IMAML(conv(out_features=3), inner_lr=0.1, inner_steps=2, cg_steps=2),
    "Reptile": lambda: Reptile(conv(out_features=3), inner_lr=0.1, inner_steps=2),
    "ProtoNet": lambda: ProtoNet(conv(embed_only=True)),
    **{
        f"BlackBox-{a}": (
            lambda a=a: BlackBoxAdaptation(conv(embed_only=True), aggregator=a, ways=3, task_dim=4, hidden=8)
        )
        for a in AGGREGATORS
    },
    "MAML-regression": lambda: MAML(MLP(hidden=(16,)), inner_lr=0.01, eval_inner_steps=3),
}
NAMES = list(LEARNERS)

#: Two export blockers were fixed in ``lightning_meta/models/blackbox.py`` (each test below would show them again):
#: ``_sequence`` called ``nn.TransformerEncoder`` with ``is_causal=None``, and torch's ``_detect_is_causal_mask``
#: compared the mask with a causal one, a data-dependent bool non-strict export cannot guard on ("Could not guard on
#: data-dependent expression"), which also sent ONNX to a strict fallback with ``aten._transformer_encoder_layer_fwd``
#: (no ONNX translation): it passes ``is_causal=False`` now (the mask is not causal: a query sees itself).
#: ``_features`` split the encoder input and branched on ``len(chunks) > 1``, a guard on the number of queries that
#: pinned it to the example's ("Constraints violated"): one pass no longer splits.


def task(name: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | list[str], tuple[torch.Tensor, ...]]:
    """``(support_x, support_y, queries)``: the support set and three query sets, the last two of the same shape
    as the first (9 queries) and one of 4 queries."""
    g = torch.Generator().manual_seed(seed)
    if name == "MAML-regression":
        x = torch.rand(27, 1, generator=g) * 10 - 5
        return x[:5], 2 * torch.sin(x[:5] + 1), (x[5:14], x[14:23], x[23:])
    images = torch.rand(6 + 9 + 9 + 4, 1, 16, 16, generator=g)
    return images[:6], ["cat", "dog", "owl"] * 2, (images[6:15], images[15:24], images[24:])


@pytest.fixture(scope="module")
def adapted():
    """Each learner (random weights) adapted to its task, with the task's query sets."""
    torch.manual_seed(0)
    out = {}
    for name, build in LEARNERS.items():
        support_x, support_y, queries = task(name)
        out[name] = (build().adapt(support_x, support_y), queries)
    return out


def assert_answers_as_the_module(program, module, queries) -> None:
    for i, query in enumerate(queries):
        torch.testing.assert_close(program(query), module(query), rtol=ATOL, atol=ATOL, msg=f"query set {i}")


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_answers_as_the_adapted_learner(adapted, name):
    module, (example, other, _) = adapted[name]
    program = torch.export.export(module, (example,))
    assert_answers_as_the_module(program.module(), module, [example, other])
    buffer = io.BytesIO()  # saved and loaded as a user deploys it (a .pt2 file)
    torch.export.save(program, buffer)
    buffer.seek(0)
    assert_answers_as_the_module(torch.export.load(buffer).module(), module, [example, other])


@pytest.mark.parametrize("name", NAMES)
def test_jit_trace_answers_as_the_adapted_learner(adapted, name):
    module, (example, other, fewer) = adapted[name]
    traced = torch.jit.trace(module, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    for program in (traced, torch.jit.load(buffer)):
        assert_answers_as_the_module(program, module, [example, other, fewer])  # the trace keeps M symbolic


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_with_a_dynamic_number_of_queries(adapted, name):
    module, (example, other, fewer) = adapted[name]
    queries = torch.export.Dim("queries", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: queries},)).module()
    assert_answers_as_the_module(program, module, [example, other, fewer, fewer[:1], torch.cat([other, other])])


def test_transductive_batch_norm_answers_depend_on_the_query_batch(adapted):
    """What the exported MAML inherits from ``batch_norm="transductive"``: a query's scores depend on the other queries
    answered with it (so predict a task's queries together); ProtoNet's BatchNorm (running statistics in eval mode)
    answers each query alone as in the batch."""
    maml, (example, *_) = adapted["MAML"]
    assert not torch.allclose(maml(example[:1]), maml(example)[:1], atol=1e-3)
    protonet, (example, *_) = adapted["ProtoNet"]
    torch.testing.assert_close(protonet(example[:1]), protonet(example)[:1], rtol=ATOL, atol=ATOL)


ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_runs_in_onnxruntime(adapted, name, tmp_path):
    if ONNX_MISSING:
        pytest.skip(
            f"ONNX export not checked: {', '.join(ONNX_MISSING)} not installed (not dependencies of "
            "lightning-meta; `pip install onnx onnxscript onnxruntime` installs them)"
        )
    import onnxruntime

    module, (example, other, _) = adapted[name]

    def export():
        torch.onnx.export(
            module,
            (example,),
            tmp_path / "adapted.onnx",
            dynamo=True,
            input_names=["query_x"],
            output_names=["scores"],
            verbose=False,
        )

    export()
    session = onnxruntime.InferenceSession(str(tmp_path / "adapted.onnx"), providers=["CPUExecutionProvider"])
    for query in (example, other):
        (out,) = session.run(None, {"query_x": query.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), module(query), rtol=ATOL, atol=ATOL)
