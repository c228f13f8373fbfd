"""method="structured" against the float64 reference on models that exercise the compiler:
loops, remat, nested jit, weight sharing through transposes and gathers, fallbacks, strictness."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc.passes.evaluate import UnsupportedPrimitiveError

NHWC = ("NHWC", "HWIO", "NHWC")


def normal(i, shape, scale=1.0):
    # numpy, not jax.random: a jax sampler compiles once per shape, which dominates test time
    return scale * np.random.default_rng(i).standard_normal(shape)


def assert_matches_reference(f, params, x1, x2, trace_axes=(-1,), diagonal_axes=(), vmap_axes=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallback reports are tested on their own
        out = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, method="structured")(
            x1, x2, params)
    ref = ntkc.testing.reference_ntk(f, x1, x2, params, trace_axes, diagonal_axes)
    assert jax.tree.structure(out) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-7, atol=1e-9)


def lstm(p, x):
    def cell(carry, xt):
        h, c = carry
        z = h @ p["U"] + xt @ p["W"] + p["b"][None, :]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((x.shape[0], 3))
    (h, _), _ = lax.scan(cell, (zeros, zeros), jnp.swapaxes(x, 0, 1))
    return h @ p["out"]


def remat_and_jit(p, x):
    h = jax.checkpoint(lambda h: jnp.sin(h @ p["A"]) + jnp.log1p(jnp.exp(h @ p["A"])))(x)

    @jax.jit
    def block(h):
        return jax.jit(lambda h: jax.nn.gelu(h @ p["B"]))(h) * 2.0

    return block(h)


def tied_embedding(p, ids):
    e = p["E"][ids]
    h = jnp.tanh(e.mean(1))
    return h @ p["E"].T


def depthwise(p, x):
    h = lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=NHWC,
                                 feature_group_count=2)
    return jnp.tanh(h).mean((1, 2)) @ p["d"]


def mixer(p, x):  # x: (N, tokens, channels)
    y = jnp.swapaxes(jax.nn.gelu(jnp.swapaxes(x, 1, 2) @ p["tok"]), 1, 2)
    x = x + y
    x = x + jax.nn.gelu(x @ p["ch"])
    return x.mean(1) @ p["head"]


def weight_norm(p, x):
    w = p["v"] / jnp.linalg.norm(p["v"], axis=0, keepdims=True) * p["g"][None, :]
    return jnp.sin(x @ w) @ p["out"]


def through_nonlinearity(p, x):
    return jnp.tanh(x * jnp.exp(p["s"])[None, :]) @ (p["w"] ** 2)


def conv_input_param(p, x):  # the image is the parameter, the data is the filter
    y = lax.conv_general_dilated(p["img"], x[0], (1, 1), "SAME", dimension_numbers=NHWC)
    return y.reshape(1, -1)


def interacting(p, x):  # examples interact through the batch mean: only vmap_axes=None is valid
    h = x @ p["w"]
    return jnp.tanh(h - h.mean(0, keepdims=True)) @ p["v"]


def qkv_attention(p, x):
    q, k, v = jnp.split(x @ p["qkv"], 3, axis=-1)
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / 2.0, axis=-1)
    return (a @ v) @ p["o"]


def cnn(p, x):
    h = lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=NHWC)
    h = jax.nn.relu(h + p["b1"][None, None, None, :])
    h = lax.conv_general_dilated(h, p["c2"], (2, 2), ((1, 0), (0, 1)), dimension_numbers=NHWC,
                                 rhs_dilation=(1, 2))
    return jnp.mean(h, axis=(1, 2)) @ p["d"]


CASES = {
    "lstm": (lstm, {"U": normal(0, (3, 12), 0.5), "W": normal(1, (2, 12)), "b": normal(2, (12,)),
                    "out": normal(3, (3, 2))}, normal(4, (2, 4, 2)), normal(5, (3, 4, 2))),
    "remat_and_jit": (remat_and_jit, {"A": normal(0, (3, 4)), "B": normal(1, (4, 2))},
                      normal(4, (2, 3)), normal(5, (3, 3))),
    "tied_embedding": (tied_embedding, {"E": normal(0, (7, 4))},
                       jnp.array([[1, 2, 3], [0, 1, 6]]),
                       jnp.array([[1, 1, 3], [5, 4, 6], [2, 2, 2]])),
    "depthwise": (depthwise, {"k": normal(0, (3, 3, 1, 4)), "d": normal(1, (4, 2))},
                  normal(4, (2, 5, 5, 2)), normal(5, (3, 5, 5, 2))),
    "mixer": (mixer, {"tok": normal(0, (4, 4)), "ch": normal(1, (3, 3)), "head": normal(2, (3, 2))},
              normal(4, (2, 4, 3)), normal(5, (3, 4, 3))),
    "weight_norm": (weight_norm, {"v": normal(0, (3, 4)), "g": normal(1, (4,)),
                                  "out": normal(2, (4, 2))}, normal(4, (2, 3)), normal(5, (3, 3))),
    "through_nonlinearity": (through_nonlinearity, {"s": normal(0, (3,)), "w": normal(1, (3, 2))},
                             normal(4, (2, 3)), normal(5, (3, 3))),
    "qkv_attention": (qkv_attention, {"qkv": normal(0, (4, 12)), "o": normal(1, (4, 3))},
                      normal(4, (2, 5, 4)), normal(5, (3, 5, 4))),
    "cnn": (cnn, {"c1": normal(0, (3, 3, 2, 4)), "b1": normal(1, (4,)),
                  "c2": normal(2, (2, 2, 4, 5)), "d": normal(3, (5, 3))},
            normal(4, (2, 6, 6, 2)), normal(5, (3, 6, 6, 2))),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("trace_axes,vmap_axes", [((-1,), 0), ((), 0), ((-1,), None)])
def test_models(name, trace_axes, vmap_axes):
    f, params, x1, x2 = CASES[name]
    assert_matches_reference(f, params, x1, x2, trace_axes, vmap_axes=vmap_axes)


@pytest.mark.quick
def test_diagonal_batch_and_x2_none():
    f, params, x1, _ = CASES["qkv_attention"]
    assert_matches_reference(f, params, x1, None, (), (0,), 0)
    assert_matches_reference(f, params, x1, None, (-1,), (1,), 0)


def test_conv_whose_input_is_a_parameter():
    params = {"img": normal(0, (1, 5, 5, 2))}
    assert_matches_reference(conv_input_param, params, normal(4, (1, 3, 3, 2, 3)),
                             normal(5, (1, 3, 3, 2, 3)), (), vmap_axes=None)


@pytest.mark.quick
def test_interacting_examples_need_vmap_axes_none():
    params = {"w": normal(0, (3, 4)), "v": normal(1, (4, 2))}
    x1, x2 = normal(4, (3, 3)), normal(5, (2, 3))
    assert_matches_reference(interacting, params, x1, x2, (), vmap_axes=None)
    # With vmap_axes=0 the certificate is false: refused (it would be computed per example).
    with pytest.raises(ValueError, match="examples interact"):
        ntkc.ntk_fn(interacting, (), vmap_axes=0, method="structured")(x1, x2, params)


TRIANGLE = np.tril(normal(9, (3, 3))) + 3 * np.eye(3)


def solve_model(p, x):  # the parameter enters triangular_solve, which has no rule
    return x @ jax.scipy.linalg.solve_triangular(TRIANGLE, p["w"], lower=True)


def test_strict_names_the_primitive_without_a_rule():
    params = {"w": normal(0, (3, 2))}
    with pytest.raises(UnsupportedPrimitiveError, match="triangular_solve"):
        ntkc.ntk_fn(solve_model, vmap_axes=0, method="structured", strict=True)(
            normal(4, (2, 3)), None, params)


@pytest.mark.parametrize("trace_axes,diagonal_axes,vmap_axes", [
    ((-1,), (), 0), ((), (), None), ((), (0,), 0), ((-1,), (), None)])
def test_embedding_uses_token_equality_without_fallback(trace_axes, diagonal_axes, vmap_axes):
    """Gathers (x[ids], jnp.take with clipping, negative ids) have a rule: strict passes.

    (Out-of-range ids under x[ids] are left out: JAX promises in-bounds there, and its own
    forward (clamped) and reverse (dropped) modes disagree on them.)
    """

    def f(p, ids):
        h = jnp.tanh(p["E"][ids].mean(1))
        return h @ p["E"].T + jnp.take(p["E"], ids[:, 0], axis=0, mode="clip") @ p["W"]

    params = {"E": normal(0, (7, 4)), "W": normal(1, (4, 7))}
    x1, x2 = jnp.array([[1, 2, 3], [0, 1, 6]]), jnp.array([[1, 1, 3], [5, 4, 6], [2, 6, -2]])
    x2 = x2 if not diagonal_axes else None
    out = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, method="structured",
                      strict=True)(x1, x2, params)
    ref = ntkc.testing.reference_ntk(f, x1, x2, params, trace_axes, diagonal_axes)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-7, atol=1e-9)


@pytest.mark.quick
def test_strict_passes_when_every_use_has_a_rule():
    f, params, x1, x2 = CASES["qkv_attention"]
    out = ntkc.ntk_fn(f, vmap_axes=0, method="structured", strict=True)(x1, x2, params)
    ref = ntkc.testing.reference_ntk(f, x1, x2, params)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-7, atol=1e-9)


def test_fallback_is_reported_once_per_primitive():
    f = solve_model
    params = {"w": normal(0, (3, 2))}
    with pytest.warns(UserWarning, match="triangular_solve"):
        ntkc.ntk_fn(f, vmap_axes=0, method="structured")(normal(4, (2, 3)), None, params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default filter, which pytest's replaces
        kernel_fn = ntkc.ntk_fn(f, vmap_axes=0, method="structured")
        kernel_fn(normal(4, (2, 3)), None, params)
        kernel_fn(normal(4, (5, 3)), None, params)  # traced again for other shapes
        ntkc.ntk_fn(f, (), vmap_axes=0, method="structured")(normal(4, (2, 3)), None, params)
    assert len([w for w in caught if "primitive 'triangular_solve'" in str(w.message)]) == 1
    assert_matches_reference(f, params, normal(4, (2, 3)), normal(5, (3, 3)))


def test_while_loop_with_an_integer_counter():
    """Reverse mode cannot differentiate a while loop; the structured method's dense route
    (forward mode) can. Reference: forward-mode Jacobians in float64."""

    def f(w, x):
        n = (x.sum() > 0).astype(int) + 2
        return lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ w), x)

    x1, w = normal(4, (2, 3)) * 0.3, normal(0, (3, 3)) * 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ntkc.ntk_fn(f, (), method="structured")(x1, None, w)
    jac = jax.jacfwd(lambda w: f(w, x1))(w).reshape(2, 3, -1)
    np.testing.assert_allclose(np.asarray(out), np.einsum("aip,bjp->abij", jac, jac),
                               rtol=1e-7, atol=1e-9)


# x2=None: x2's factors and cotangents are x1's arrays, so a step that repeats one of x1's on
# them is computed once (XLA's common subexpressions), and the order search counts it once.

def token_model(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"]) @ p["v"], axis=-2)


TOKEN_PARAMS = {"w": normal(0, (32, 16), 32 ** -0.5), "v": normal(1, (16, 4))}
TOKENS = normal(2, (2, 16, 32))


@pytest.mark.parametrize("trace_axes, diagonal_axes",
                         [((-1,), ()), ((), ()), ((), (0,)), ((-1,), (0,)), ((0, -1), ())])
def test_x2_none_with_shared_weight_gradients_matches_reference(trace_axes, diagonal_axes):
    assert_matches_reference(token_model, TOKEN_PARAMS, TOKENS, None, trace_axes, diagonal_axes)


def _xla_flops_and_terms(trace_axes):
    kfn = ntkc.ntk_fn(token_model, trace_axes, vmap_axes=0, method="structured")
    compiled = jax.jit(lambda x, p: kfn(x, None, p)).lower(TOKENS, TOKEN_PARAMS).compile()
    plan = ntkc.plan(token_model, TOKENS, None, TOKEN_PARAMS, trace_axes=trace_axes,
                     vmap_axes=0, method="structured")
    return compiled.cost_analysis()["flops"], plan


def test_shared_weight_gradient_is_computed_once(monkeypatch):
    """With the outputs traced, x2's weight gradient of w repeats x1's: the order that computes
    it wins once it is free, and XLA's count of the program drops by about that much."""
    flops, plan = _xla_flops_and_terms((-1,))
    from ntkc.passes import network, path

    monkeypatch.setattr(network, "optimize",
                        lambda *a, mirror=None, **k: path.optimize(*a, **k))  # the old search
    plain_flops, plain = _xla_flops_and_terms((-1,))
    orders = [(t.order, p.order) for t, p in zip(plan.terms, plain.terms)]
    assert any(a != b for a, b in orders)
    saving = sum(p.cost.flops for p in plain.terms) - sum(t.cost.flops for t in plan.terms)
    assert saving > 0
    assert flops < plain_flops - 0.5 * saving


def test_residuals_are_read_from_one_materialised_copy():
    """The per-example values the cotangent pass reads go through ``materialised``: a loop
    XLA cannot unroll, so it stores them once instead of recomputing them in every cotangent's
    fused ops. It is the identity, also for jax.grad (a kernel differentiated by its user)."""
    from ntkc.passes.evaluate import materialised

    x, token = normal(3, (5, 4)), normal(4, (3,))
    np.testing.assert_array_equal(materialised([x], token)[0], x)
    keys = jax.random.split(jax.random.key(0), 3)  # an extended dtype passes through too
    got_keys, got_x = materialised([keys, x], token)
    np.testing.assert_array_equal(jax.random.key_data(got_keys), jax.random.key_data(keys))
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_allclose(jax.grad(lambda a: jnp.sum(materialised([a], token)[0] ** 2))(x),
                               2 * x)
    kfn = ntkc.ntk_fn(mixer, (), vmap_axes=0, method="structured")
    params, x1, x2 = CASES["mixer"][1:]
    jaxpr = jax.make_jaxpr(lambda a, b, p: kfn(a, b, p))(x1, x2, params)
    assert "while" in str(jaxpr)
    grad = jax.grad(lambda a: jnp.sum(kfn(a, x2, params) ** 2))(x1)
    jac = ntkc.ntk_fn(mixer, (), vmap_axes=0, method="jacobian")
    want = jax.grad(lambda a: jnp.sum(jac(a, x2, params) ** 2))(x1)
    assert np.any(want != 0)
    np.testing.assert_allclose(grad, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("activation,limit,looped", [
    (jnp.tanh, None, True),        # its residuals (64 entries per example) are small
    (jnp.tanh, 2, False),          # larger than the limit (the input's 3, the hidden 64): XLA's
    (jax.nn.relu, 2, True),        # masks are stored whatever their size
])
def test_only_residuals_cheap_to_store_are_materialised(activation, limit, looped, monkeypatch):
    """Materialising every residual held ViT-S/16's activations at once (2.4x its memory):
    masks and small arrays are materialised, larger float residuals are not. The kernel is
    the reference's either way."""
    from ntkc.passes import evaluate

    if limit is not None:
        monkeypatch.setattr(evaluate, "SMALL_RESIDUAL", limit)
    params = {"w1": normal(1, (3, 64)), "w2": normal(2, (64, 2))}
    f = lambda p, x: activation(x @ p["w1"]) @ p["w2"]
    x1, x2 = normal(3, (4, 3)), normal(5, (2, 3))
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured")
    jaxpr = str(jax.make_jaxpr(lambda a, b, p: kfn(a, b, p))(x1, x2, params))
    assert ("while" in jaxpr) == looped
    np.testing.assert_allclose(kfn(x1, x2, params),
                               ntkc.testing.reference_ntk(f, x1, x2, params, ()),
                               rtol=1e-9, atol=1e-11)
