"""The linear forms of the cotangent pass (ntkc/rules/linear_forms.py): each is the same linear
map as its primitive, its transpose equals JAX's, and kernels through it match the reference."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc._compat import select_and_gather_add_p
from ntkc.rules import apply_linear
from ntkc.testing import reference_ntk


def _pool_eqn(shape, dims, strides, padding, op):
    """The select_and_gather_add equation of a max (min) pool's linear map, as JAX writes it."""
    init = -jnp.inf if op is lax.max else jnp.inf
    pool = lambda x: lax.reduce_window(x, init, op, dims, strides, padding)
    x = jnp.zeros(shape, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x, t: jax.jvp(pool, (x,), (t,))[1])(x, x)
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive is select_and_gather_add_p]
    return eqn


# (shape, window, strides, padding): ResNet's stem pool, non-overlapping, 1-D, uneven padding,
# stride 1 (one phase)
POOLS = [
    ((2, 9, 9, 3), (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
    ((2, 8, 8, 3), (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (0, 0), (0, 0), (0, 0))),
    ((3, 11), (1, 4), (1, 3), ((0, 0), (2, 1))),
    ((1, 7, 6, 2), (1, 3, 2, 1), (1, 1, 2, 1), ((0, 0), (0, 2), (1, 0), (0, 0))),
    ((2, 5, 5, 2), (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
]


@pytest.mark.quick
@pytest.mark.parametrize("op", [lax.max, lax.min], ids=["max", "min"])
@pytest.mark.parametrize("shape,dims,strides,padding", POOLS)
def test_pooled_tangent_is_the_same_linear_map(shape, dims, strides, padding, op):
    eqn = _pool_eqn(shape, dims, strides, padding, op)
    rng = np.random.default_rng(0)
    # relu'd values: whole windows of zeros tie (the first entry is taken by both forms); ties
    # between some entries of a window are broken by XLA in an order that depends on how it
    # rewrites the window (see the next test), so the other values are distinct
    x = np.maximum(rng.standard_normal(shape), 0) * (rng.random(shape) < 0.7)
    x = jnp.asarray(x if op is lax.max else -x, jnp.float32)
    t = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    expected = eqn.primitive.bind(t, x, **eqn.params)
    got = apply_linear(eqn, [t, x])[0]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    # the transposes (what the cotangent pass runs) agree too
    ct = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
    ref_t = jax.linear_transpose(lambda t: eqn.primitive.bind(t, x, **eqn.params), t)(ct)[0]
    our_t = jax.linear_transpose(lambda t: apply_linear(eqn, [t, x])[0], t)(ct)[0]
    np.testing.assert_array_equal(np.asarray(our_t), np.asarray(ref_t))


@pytest.mark.quick
@pytest.mark.parametrize("window", [
    [[0, 1], [1, 1]], [[1, 1], [1, 1]], [[-2, 2], [2, 2], [-2, 2]], [[0, 1, 0], [0, 1, 1], [1, 0, 0]]])
def test_pooled_tangent_keeps_the_first_maximum(window):
    """Tied maxima in one window: the tangent of the first (row-major), as XLA's ge selects on
    a single window. (Where windows overlap, XLA may reduce one axis at a time, which breaks
    ties column-first: the choice at exact ties is XLA's, not JAX's contract.)"""
    window = np.asarray(window, np.float32)
    eqn = _pool_eqn(window.shape, window.shape, window.shape, ((0, 0),) * 2, lax.max)
    x = jnp.asarray(window)
    t = jnp.arange(1.0, 1.0 + window.size, dtype=jnp.float32).reshape(window.shape)
    first = 1.0 + float(np.argmax(window.ravel()))
    assert float(apply_linear(eqn, [t, x])[0].squeeze()) == first
    assert float(eqn.primitive.bind(t, x, **eqn.params).squeeze()) == first


def _pool_cnn(p, x):
    h = jax.nn.relu(lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))
    h = lax.conv_general_dilated(h, p["c2"], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = -lax.reduce_window(-jax.nn.relu(h), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return h.mean((1, 2)) @ p["w"]


@pytest.mark.quick
@pytest.mark.parametrize("trace_axes,x2", [((), False), ((-1,), True)])
def test_kernel_through_max_pools_matches_reference(trace_axes, x2):
    rng = np.random.default_rng(1)
    params = {"c1": rng.standard_normal((3, 3, 2, 4)) / 4, "c2": rng.standard_normal((3, 3, 4, 4)) / 6,
              "w": rng.standard_normal((4, 3))}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    _check_kernel(_pool_cnn, params, (8, 8, 2), trace_axes, x2, rng)


def _check_kernel(f, params, image, trace_axes, x2, rng):
    """The structured kernel of ``f`` on 3 (and 2 other) random images against the reference."""
    x1 = jnp.asarray(rng.standard_normal((3, *image)), jnp.float32)
    other = jnp.asarray(rng.standard_normal((2, *image)), jnp.float32) if x2 else None
    kernel_fn = ntkc.ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, method="structured")
    got = kernel_fn(x1, other, params)
    ref = reference_ntk(f, x1, other, params, trace_axes=trace_axes)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())


@pytest.mark.quick
def test_structured_program_has_no_select_and_scatter_on_cpu():
    """The claim the form is there for: the cotangent pass transposes no select_and_gather_add."""
    rng = np.random.default_rng(2)
    params = {"c1": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32),
              "c2": jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32),
              "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 2)), jnp.float32)
    kernel_fn = ntkc.ntk_fn(_pool_cnn, trace_axes=(), vmap_axes=0, method="structured")
    text = jax.jit(lambda a, p: kernel_fn(a, None, p)).lower(x, params).as_text()
    assert ("select_and_scatter" in text) is (jax.default_backend() != "cpu")


@pytest.mark.quick
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the form is CPU-only (JAX's elsewhere)")
@pytest.mark.parametrize("x2", [False, True])
def test_pool_winners_are_found_once_per_example_not_per_cotangent(x2):
    """The claim of ``_window_winners``: each pool's winners come from one variadic
    reduce_window per side over the examples' activations, outside the cotangent basis (its
    result carries no output axis), so the transpose only compares positions."""
    rng = np.random.default_rng(3)
    params = {"c1": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32),
              "c2": jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32),
              "w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 2)), jnp.float32)
    other = x + 1.0 if x2 else None
    kernel_fn = ntkc.ntk_fn(_pool_cnn, trace_axes=(), vmap_axes=0, method="structured")
    text = jax.jit(lambda a, b, p: kernel_fn(a, b, p)).lower(x, other, params).as_text()
    shapes = re.findall(r"-> \(tensor<([0-9x]+)xf32>, tensor<([0-9x]+)xi32>\)", text)
    sizes = sorted(math.prod(int(d) for d in f.split("x")) for f, i in shapes if f == i)
    # the 3x3 / 2 pool gives 2 x 4 x 4 x 4 winners, the 2x2 / 2 pool 2 x 2 x 2 x 4; per side
    assert sizes == sorted([2 * 4 * 4 * 4, 2 * 2 * 2 * 4] * (2 if x2 else 1))


# (input shape, kernel shape, strides, padding, dimension numbers, feature groups): ResNet's
# 3x3 / 2 and 1x1 / 2 (a 1x1 kernel reads one phase), channels first with groups and uneven
# padding, 1-D with stride 4, a 7x7 / 2 stem
STRIDED_CONVS = [
    ((2, 9, 9, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1)), ("NHWC", "HWIO", "NHWC"), 1),
    ((2, 9, 9, 4), (1, 1, 4, 5), (2, 2), ((0, 0), (0, 0)), ("NHWC", "HWIO", "NHWC"), 1),
    ((2, 4, 11, 10), (6, 2, 5, 3), (3, 2), ((2, 0), (1, 3)), ("NCHW", "OIHW", "NCHW"), 2),
    ((3, 13, 4), (7, 4, 6), (4,), ((3, 3),), ("NWC", "WIO", "NWC"), 1),
    ((2, 8, 8, 4), (7, 7, 4, 5), (2, 2), ((3, 3), (3, 3)), ("NHWC", "HWIO", "NHWC"), 1),
]


@pytest.mark.quick
@pytest.mark.parametrize("shape,kernel,strides,padding,dn,groups", STRIDED_CONVS)
def test_strided_conv_form_is_the_same_bilinear_map(shape, kernel, strides, padding, dn, groups):
    """The same values, and the same transposes in either operand (the input gradient is what
    the cotangent pass runs), to float32 rounding: the phases' sums are taken in another order."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
    conv = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn,
                                                 feature_group_count=groups)
    (eqn,) = jax.make_jaxpr(conv)(x, w).jaxpr.eqns
    ours = lambda x, w: apply_linear(eqn, [x, w])[0]
    expected = conv(x, w)
    tol = dict(rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(expected), **tol)
    ct = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
    for i, arg in enumerate((x, w)):
        def along(fn, i=i):
            return jax.linear_transpose(lambda a: fn(*((a, w) if i == 0 else (x, a))), arg)(ct)[0]
        ref_t = along(conv)
        np.testing.assert_allclose(np.asarray(along(ours)), np.asarray(ref_t), rtol=1e-5,
                                   atol=1e-5 * float(jnp.abs(ref_t).max()))


@pytest.mark.quick
def test_strided_conv_form_keeps_patch_embeddings_whole():
    """A 16x16 / 16 convolution reads 256 phases: JAX's own form is kept, not 256 convolutions."""
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    w = jnp.zeros((16, 16, 3, 8), jnp.float32)
    conv = lambda x, w: lax.conv_general_dilated(x, w, (16, 16), "VALID",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    (eqn,) = jax.make_jaxpr(conv)(x, w).jaxpr.eqns
    convs = [e for e in jax.make_jaxpr(lambda x: apply_linear(eqn, [x, w]))(x).jaxpr.eqns
             if e.primitive is lax.conv_general_dilated_p]
    assert len(convs) == 1 and convs[0].params["window_strides"] == (16, 16)
    w = w[:3, :3]  # 3x3 / 2 reads 4 phases: the form
    (eqn,) = jax.make_jaxpr(lambda x, w: lax.conv_general_dilated(
        x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w).jaxpr.eqns
    convs = [e for e in jax.make_jaxpr(lambda x: apply_linear(eqn, [x, w]))(x).jaxpr.eqns
             if e.primitive is lax.conv_general_dilated_p]
    assert len(convs) == (4 if jax.default_backend() == "cpu" else 1)


def _strided_cnn(p, x):
    h = jax.nn.relu(lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    r = lax.conv_general_dilated(h, p["down"], (2, 2), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = lax.conv_general_dilated(h, p["c2"], (2, 2), ((1, 1), (1, 1)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h + r).mean((1, 2)) @ p["w"]


def _strided_params(rng):
    shapes = {"c1": (3, 3, 2, 4), "down": (1, 1, 4, 6), "c2": (3, 3, 4, 6), "w": (6, 3)}
    return {k: jnp.asarray(rng.standard_normal(s) / np.sqrt(np.prod(s[:-1])), jnp.float32)
            for k, s in shapes.items()}


@pytest.mark.quick
@pytest.mark.parametrize("trace_axes,x2", [((), False), ((-1,), True)])
def test_kernel_through_strided_convs_matches_reference(trace_axes, x2):
    rng = np.random.default_rng(5)
    _check_kernel(_strided_cnn, _strided_params(rng), (9, 9, 2), trace_axes, x2, rng)


@pytest.mark.quick
def test_structured_program_has_no_input_dilated_conv_on_cpu():
    """The claim the form is there for: no input gradient of a strided convolution runs as a
    convolution over the dilated cotangent."""
    rng = np.random.default_rng(6)
    params = _strided_params(rng)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 2)), jnp.float32)
    kernel_fn = ntkc.ntk_fn(_strided_cnn, trace_axes=(), vmap_axes=0, method="structured")
    text = jax.jit(lambda a, p: kernel_fn(a, None, p)).lower(x, params).as_text()
    dilations = re.findall(r"lhs_dilate = \[([0-9, ]+)\]", text)
    assert dilations, "no convolution found in the lowered program"
    assert any(set(d.replace(" ", "").split(",")) != {"1"} for d in dilations) is (
        jax.default_backend() != "cpu")
