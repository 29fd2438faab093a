import pytest
import torch
from maml_oracles import (
    cross_entropy,
    directional_finite_difference,
    finite_difference_gradient,
    first_order_gradient,
    general_gradient,
    mse,
    named_conv4_forward,
    named_mlp_forward,
    second_order_gradient,
)

from lightning_meta import MAML, SinusoidTasks, TaskBatch
from lightning_meta.data.seeding import task_generator
from lightning_meta.functional import TaskLoss, hvp, scaled_grad
from lightning_meta.models import MLP, Conv4


def sinusoid_batch(tasks=3, shots=5, dtype=torch.float64):
    generators = [task_generator(1, "train", 0, i) for i in range(tasks)]
    batch = SinusoidTasks(shots=shots, queries=6).sample("train", generators)
    return TaskBatch(*(t.to(dtype) for t in batch))


def small_mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MLP(hidden=(6, 6), activation="tanh").to(dtype)


def meta_grad(model: MAML, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss = model.objective(batch).loss  # what training_step returns, without logging
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads


def model_weights(maml):
    return [p.detach() for p in maml.model.parameters()]


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_equals_unrolled_oracle_and_finite_differences(steps):
    batch = sinusoid_batch()
    maml = MAML(small_mlp(), inner_lr=0.05, inner_steps=steps, meta_gradient="second_order")
    got = list(meta_grad(maml, batch).values())
    oracle = second_order_gradient(model_weights(maml), batch, 0.05, steps)
    for g, o in zip(got, oracle):
        torch.testing.assert_close(g, o, atol=1e-6, rtol=1e-6)
    fd = finite_difference_gradient(model_weights(maml), batch, 0.05, steps)
    for g, f in zip(got, fd):
        torch.testing.assert_close(g, f, atol=1e-4, rtol=1e-4)


def test_first_order_equals_fomaml_formula_and_differs_from_second_order():
    batch = sinusoid_batch()
    maml = MAML(small_mlp(), inner_lr=0.05, inner_steps=2, meta_gradient="first_order")
    got = list(meta_grad(maml, batch).values())
    oracle = first_order_gradient(model_weights(maml), batch, 0.05, 2)
    for g, o in zip(got, oracle):
        torch.testing.assert_close(g, o, atol=1e-6, rtol=1e-6)
    exact = second_order_gradient(model_weights(maml), batch, 0.05, 2)
    assert max((g - e).abs().max().item() for g, e in zip(got, exact)) > 1e-4


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_hvp_equals_second_order(steps):
    batch = sinusoid_batch()
    exact = meta_grad(MAML(small_mlp(), inner_lr=0.05, inner_steps=steps), batch)
    for method in ("autograd", "finite_difference"):
        maml = MAML(small_mlp(), inner_lr=0.05, inner_steps=steps, meta_gradient="hvp", hvp_method=method)
        got = meta_grad(maml, batch)
        for name in exact:
            torch.testing.assert_close(got[name], exact[name], atol=1e-6, rtol=1e-6)


def test_hvp_loss_value_is_the_query_loss():
    batch = sinusoid_batch()
    a = MAML(small_mlp(), inner_lr=0.05, inner_steps=2).objective(batch).loss
    b = MAML(small_mlp(), inner_lr=0.05, inner_steps=2, meta_gradient="hvp").objective(batch).loss
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("learn_inner_lr, adapt", [("per_step", "all"), ("per_tensor", "head"), ("off", ["head.*"])])
def test_hvp_equals_second_order_with_learned_lrs_and_partial_adaptation(learn_inner_lr, adapt):
    batch = sinusoid_batch()
    kwargs = dict(inner_lr=0.05, inner_steps=3, learn_inner_lr=learn_inner_lr, adapt=adapt)
    exact = meta_grad(MAML(small_mlp(), **kwargs), batch)
    got = meta_grad(MAML(small_mlp(), meta_gradient="hvp", **kwargs), batch)
    assert set(got) == set(exact)
    if learn_inner_lr != "off":
        assert "inner_lrs" in exact and exact["inner_lrs"].abs().sum() > 0
    for name in exact:
        torch.testing.assert_close(got[name], exact[name], atol=1e-6, rtol=1e-6)


def test_hvp_and_second_order_agree_on_conv4_with_batch_norm():
    torch.manual_seed(0)
    x = torch.rand(2, 6, 1, 16, 16, dtype=torch.float64)
    batch = TaskBatch(x[:, :3], torch.tensor([[0, 1, 2]] * 2), x[:, 3:], torch.tensor([[2, 0, 1]] * 2))
    models = []
    for mode in ("second_order", "hvp"):
        torch.manual_seed(1)
        models.append(MAML(Conv4(out_features=3, hidden=4, image_size=16).double(), inner_lr=0.3, inner_steps=2,
                           meta_gradient=mode))
    exact, got = meta_grad(models[0], batch), meta_grad(models[1], batch)
    for name in exact:
        torch.testing.assert_close(got[name], exact[name], atol=1e-6, rtol=1e-6)


def relative_error(a: dict, b: dict) -> float:
    num = sum(((a[n] - b[n]) ** 2).sum() for n in a) ** 0.5
    return float(num / sum((b[n] ** 2).sum() for n in b) ** 0.5)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_finite_difference_hvp_matches_autograd_on_tanh_mlp(dtype, tolerance):
    model = small_mlp(dtype)
    batch = sinusoid_batch(dtype=dtype)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=gen).to(dtype) for n, p in params.items()}
    task_loss = TaskLoss(model, torch.nn.functional.mse_loss)
    exact = hvp(task_loss, params, direction, batch.support_x[0], batch.support_y[0], "autograd")
    approx = hvp(task_loss, params, direction, batch.support_x[0], batch.support_y[0], "finite_difference")
    assert relative_error(approx, exact) < tolerance


def test_vmap_and_loop_agree_in_training_and_evaluation():
    torch.manual_seed(0)
    x = torch.rand(3, 8, 1, 16, 16, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    batch = TaskBatch(x[:, :4], labels.repeat(3, 1), x[:, 4:], labels.flip(0).repeat(3, 1))
    results = []
    for vectorize in (False, True):
        torch.manual_seed(1)
        maml = MAML(Conv4(out_features=2, hidden=4, image_size=16).double(), inner_lr=0.2, inner_steps=2,
                    vectorize=vectorize)
        grads = meta_grad(maml, batch)
        results.append((grads, maml.predict_step(batch, 0)))
    for name in results[0][0]:
        torch.testing.assert_close(results[1][0][name], results[0][0][name], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-9, rtol=1e-9)


def test_transductive_batch_norm_keeps_no_running_statistics():
    maml = MAML(Conv4(out_features=2, hidden=4, image_size=16))
    assert maml.batch_norm_layers == ["features.0.1", "features.1.1", "features.2.1", "features.3.1"]
    assert not any("running" in k for k in maml.state_dict())
    x = torch.rand(4, 1, 16, 16)
    maml.eval()
    # batch statistics in eval mode too: an output depends on the other inputs of its batch
    assert not torch.allclose(maml(x)[:2], maml(x[:2]))


def test_inner_loss_scale_leaves_gradients_unchanged():
    batch = sinusoid_batch(dtype=torch.float32)
    a = meta_grad(MAML(small_mlp(torch.float32), inner_lr=0.05, inner_steps=2), batch)
    b = meta_grad(MAML(small_mlp(torch.float32), inner_lr=0.05, inner_steps=2, inner_loss_scale=1024.0), batch)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def omniglot_like_batch() -> TaskBatch:
    """2 tasks, 3-way 2-shot 2-query, one-channel 16x16 images in separate contiguous tensors (as loaded)."""
    torch.manual_seed(0)
    shape = (2, 6, 1, 16, 16)
    return TaskBatch(torch.rand(shape), torch.tensor([[0, 1, 2] * 2] * 2), torch.rand(shape),
                     torch.tensor([[2, 0, 1] * 2] * 2))


def test_channels_last_survives_adaptation_with_one_input_channel():
    """One-channel images (Omniglot) must stay NHWC through adapted weights (else BN and pooling run NCHW)."""
    batch = omniglot_like_batch()
    grads, strides = [], []
    for channels_last in (False, True):
        torch.manual_seed(1)
        maml = MAML(Conv4(out_features=3, hidden=8, image_size=16), inner_lr=0.3, channels_last=channels_last)
        hook = maml.model.features[0][1].register_forward_hook(lambda m, i, o: strides.append(i[0].stride()))
        grads.append(meta_grad(maml, batch))
        hook.remove()
    nhwc = strides[len(strides) // 2:]  # support and query forwards of both tasks, at theta and at phi
    assert all(s[1] == 1 for s in nhwc), nhwc
    assert all(s[1] != 1 for s in strides[:len(strides) // 2])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_inner_loss_scale_guards_float16_inner_gradients_from_underflow():
    """The fp16 trap of 16-mixed, on CPU: float16 autocast with gradients near float16's subnormal range.

    A loss weighted by 1e-5 stands in for the small gradients deep in a network. Unscaled, the float16
    backward loses them to subnormals and zeros; scaled by 2**10 (the 16-mixed default) and divided back, the
    inner gradient matches a float64 oracle.
    """
    torch.manual_seed(0)
    model = MLP()
    x = torch.rand(10, 1) * 10 - 5
    y = 3 * torch.sin(x)
    task_loss = TaskLoss(model, lambda out, target: 1e-5 * torch.nn.functional.mse_loss(out, target))
    params = dict(model.named_parameters())
    exact64 = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    oracle = dict(zip(params, torch.autograd.grad(task_loss(exact64, x.double(), y.double())[0],
                                                  list(exact64.values()))))
    errors = {}
    for scale in (1.0, 2.0**10):
        with torch.autocast("cpu", dtype=torch.float16):
            grads = scaled_grad(task_loss(params, x, y)[0], list(params.values()), scale)
        errors[scale] = relative_error({n: g.double() for n, g in zip(params, grads)}, oracle)
    print(f"relative error of the float16 inner gradient: {errors}")
    assert errors[2.0**10] < 2e-3
    assert errors[1.0] > 10 * errors[2.0**10]


def test_adapted_params_and_forward_reproduce_predict_step():
    batch = omniglot_like_batch()
    maml = MAML(Conv4(out_features=3, hidden=8, image_size=16), inner_lr=0.3, eval_inner_steps=2)
    predicted = maml.predict_step(batch, 0)
    for t in range(2):
        phi = maml.adapted_params(batch.support_x[t], batch.support_y[t])
        assert not torch.allclose(phi["head.weight"], maml.model.head.weight)
        torch.testing.assert_close(maml(batch.query_x[t], params=phi), predicted[t], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# The independent oracle beyond "MLP, MSE, everything adapted": learned inner lrs, ANIL and name patterns,
# cross-entropy, Conv-4 with transductive BatchNorm; each for every meta-gradient mode.

def classification_batch(tasks=3, ways=3, shots=2, queries=2, features=4, image=None, dtype=torch.float64):
    """Random inputs (features, or ``[1, image, image]`` images), labels ``0..ways-1`` in a per-task order."""
    gen = torch.Generator().manual_seed(5)
    shape = (features,) if image is None else (1, image, image)
    xs = torch.randn(tasks, ways * shots, *shape, generator=gen, dtype=dtype)
    xq = torch.randn(tasks, ways * queries, *shape, generator=gen, dtype=dtype)
    ys = torch.stack([torch.randperm(ways, generator=gen).repeat(shots) for _ in range(tasks)])
    yq = torch.stack([torch.randperm(ways, generator=gen).repeat(queries) for _ in range(tasks)])
    return TaskBatch(xs, ys, xq, yq)


MLP_NAMES = ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias"]

#: name -> (model factory, batch factory, oracle forward, oracle loss, adapted names in model order, MAML kwargs)
ORACLE_CASES = {
    "per_tensor_lr": (small_mlp, sinusoid_batch, named_mlp_forward, mse, MLP_NAMES,
                      dict(inner_steps=2, learn_inner_lr="per_tensor")),
    "per_step_lr": (small_mlp, sinusoid_batch, named_mlp_forward, mse, MLP_NAMES,
                    dict(inner_steps=3, learn_inner_lr="per_step")),
    "anil_head": (small_mlp, sinusoid_batch, named_mlp_forward, mse, ["head.weight", "head.bias"],
                  dict(inner_steps=2, adapt="head")),
    "patterns_per_step_lr": (small_mlp, sinusoid_batch, named_mlp_forward, mse,
                             ["body.0.bias", "body.2.weight", "body.2.bias", "head.bias"],
                             dict(inner_steps=2, adapt=["body.2.w*", "*.bias"], learn_inner_lr="per_step")),
    "cross_entropy": (lambda: MLP(in_features=4, out_features=3, hidden=(6, 6), activation="tanh").double(),
                      classification_batch, named_mlp_forward, cross_entropy, MLP_NAMES,
                      dict(inner_steps=2, learn_inner_lr="per_tensor")),
    "conv4_batch_norm": (lambda: Conv4(out_features=3, hidden=4, image_size=16).double(),
                         lambda: classification_batch(tasks=2, image=16), named_conv4_forward, cross_entropy, None,
                         dict(inner_steps=2)),
}
MODES = [("second_order", "autograd"), ("first_order", "autograd"), ("hvp", "autograd"), ("hvp", "finite_difference")]
# finite-difference HVPs are for smooth models: not for Conv-4 (ReLU, max-pool)
ORACLE_RUNS = [(case, *mode) for case in ORACLE_CASES for mode in MODES
               if not (case == "conv4_batch_norm" and mode[1] == "finite_difference")]


def build_case(case: str, mode: str, hvp_method: str = "autograd"):
    make_model, make_batch, forward, loss_fn, adapted, kwargs = ORACLE_CASES[case]
    torch.manual_seed(0)
    model = make_model()
    if adapted is None:
        adapted = [n for n, _ in model.named_parameters()]
    maml = MAML(model, inner_lr=0.1, meta_gradient=mode, hvp_method=hvp_method, **kwargs).double()
    learn = kwargs.get("learn_inner_lr", "off") != "off"
    if learn:  # distinct lrs, so that a lr applied to the wrong tensor or step shows
        with torch.no_grad():
            maml.inner_lrs.copy_(0.05 + 0.01 * torch.arange(maml.inner_lrs.numel()).reshape(maml.inner_lrs.shape))
    return maml, make_batch(), forward, loss_fn, adapted, kwargs["inner_steps"], learn


def package_gradient(maml: MAML, batch) -> dict[str, torch.Tensor]:
    return {n.removeprefix("model."): g for n, g in meta_grad(maml, batch).items()}


def oracle_for(maml, batch, forward, loss_fn, adapted, steps, learn, first_order):
    theta = {n: p.detach() for n, p in maml.model.named_parameters()}
    return general_gradient(forward, loss_fn, theta, maml.inner_lrs.detach(), adapted, batch, steps,
                            first_order=first_order, learn_lrs=learn)


@pytest.mark.parametrize("case, mode, hvp_method", ORACLE_RUNS, ids=["-".join(r) for r in ORACLE_RUNS])
def test_meta_gradient_equals_independent_oracle(case, mode, hvp_method):
    """second_order and hvp: autograd through the oracle's unrolled loop; first_order: the same, inner grads
    detached. Covers the inner-lr gradient (learned lrs), partial adaptation, cross-entropy and BatchNorm."""
    maml, batch, forward, loss_fn, adapted, steps, learn = build_case(case, mode, hvp_method)
    assert maml.adapted == adapted
    got = package_gradient(maml, batch)
    oracle = oracle_for(maml, batch, forward, loss_fn, adapted, steps, learn, first_order=mode == "first_order")
    assert set(got) == set(oracle)
    tol = 1e-7 if hvp_method == "finite_difference" else 1e-9
    for name in oracle:
        torch.testing.assert_close(got[name], oracle[name], atol=tol, rtol=1e-6, msg=f"{case} {mode} {name}")
    if learn:
        assert oracle["inner_lrs"].abs().min() > 1e-6  # every learned lr gets a gradient
    if mode == "first_order":  # the first- and second-order oracles differ here, so the match means something
        exact = oracle_for(maml, batch, forward, loss_fn, adapted, steps, learn, first_order=False)
        assert max((exact[n] - oracle[n]).abs().max().item() for n in oracle) > 1e-4


@pytest.mark.parametrize("case", list(ORACLE_CASES))
def test_oracle_agrees_with_finite_differences(case):
    """The oracle itself, checked along a random direction of (theta, inner_lrs) by central differences."""
    maml, batch, forward, loss_fn, adapted, steps, learn = build_case(case, "second_order")
    oracle = oracle_for(maml, batch, forward, loss_fn, adapted, steps, learn, first_order=False)
    gen = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(g.shape, generator=gen, dtype=g.dtype) for n, g in oracle.items()}
    norm = sum((d ** 2).sum() for d in direction.values()) ** 0.5
    direction = {n: d / norm for n, d in direction.items()}
    theta = {n: p.detach() for n, p in maml.model.named_parameters()}
    fd = directional_finite_difference(forward, loss_fn, theta, maml.inner_lrs.detach(), adapted, batch, steps,
                                       direction)
    analytic = sum((oracle[n] * direction[n]).sum() for n in oracle).item()
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), (fd, analytic)


@pytest.mark.parametrize("mode", ["second_order", "first_order", "hvp"])
def test_anil_inner_loop_leaves_the_body_unadapted(mode):
    """With adapt="head", every forward of the inner loop and of the query uses theta's body; the head moves."""
    maml, batch, *_ = build_case("anil_head", mode)
    body, head = maml.model.body[0], maml.model.head
    theta_body, theta_head = body.weight.detach().clone(), head.weight.detach().clone()
    seen = {"body": [], "head": []}
    hooks = [body.register_forward_pre_hook(lambda m, i: seen["body"].append(m.weight.detach().clone())),
             head.register_forward_pre_hook(lambda m, i: seen["head"].append(m.weight.detach().clone()))]
    grads = package_gradient(maml, batch)
    for hook in hooks:
        hook.remove()
    assert len(seen["body"]) >= batch.num_tasks * 3  # 2 support forwards and a query forward per task
    assert all(torch.equal(w, theta_body) for w in seen["body"])
    assert sum(not torch.equal(w, theta_head) for w in seen["head"]) >= batch.num_tasks * 2
    assert grads["body.0.weight"].abs().sum() > 0  # the body still learns, in the outer loop
    phi = maml.adapted_params(batch.support_x[0], batch.support_y[0])
    for name, p in maml.model.named_parameters():
        assert torch.equal(phi[name], p.detach()) == name.startswith("body."), name
