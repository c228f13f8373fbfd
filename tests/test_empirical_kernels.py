"""empirical_nngp_fn, empirical_kernel_fn and pseudo_ntk_fn against float64 references.

The NNGP reference is reference_ntk of ``s -> s · f(params, x)`` at ``s = 1``: its Jacobian in the
scalar ``s`` is ``f(x)``, so its NTK is ``f(x1) f(x2)ᵀ`` with the same axes rules.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc

R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 6)), "v": R.standard_normal((6, 4))}
X1, X2 = R.standard_normal((5, 2, 3)), R.standard_normal((3, 2, 3))  # outputs (N, X=2, O=4)


def net(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def reference_nngp(f, x1, x2, params, trace_axes, diagonal_axes):
    scaled = lambda s, x: jax.tree.map(lambda y: s * y, f(params, x))
    return ntkc.testing.reference_ntk(scaled, x1, x2, np.float64(1.0),
                                      trace_axes, diagonal_axes)


@pytest.mark.quick
@pytest.mark.parametrize("trace_axes,diagonal_axes", [((-1,), ()), ((), ()), ((-1,), (1,)),
                                                      ((1,), (0,)), ((0, 2), ())])
def test_nngp_matches_the_outer_product_with_every_axes_rule(trace_axes, diagonal_axes):
    x2 = X1 if 0 in (trace_axes + diagonal_axes) else X2   # a traced batch axis needs N1 == N2
    got = ntkc.empirical_nngp_fn(net, trace_axes, diagonal_axes)(X1, x2, PARAMS)
    want = reference_nngp(net, X1, x2, PARAMS, trace_axes, diagonal_axes)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_nngp_x2_none_and_pytree_outputs():
    f = lambda p, x: {"a": net(p, x), "b": jnp.sin(x @ p["w"])[..., :2]}
    got = ntkc.empirical_nngp_fn(f, diagonal_axes=(1,))(X1, None, PARAMS)
    want = reference_nngp(f, X1, None, PARAMS, (-1,), (1,))
    for key in ("a", "b"):
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-12, atol=1e-12)


def test_kernel_fn_answers_get_as_neural_tangents():
    kernel_fn = ntkc.empirical_kernel_fn(net, trace_axes=(-1,), vmap_axes=0, implementation=1)
    ntk = ntkc.testing.reference_ntk(net, X1, X2, PARAMS)
    nngp = reference_nngp(net, X1, X2, PARAMS, (-1,), ())
    np.testing.assert_allclose(np.asarray(kernel_fn(X1, X2, "ntk", PARAMS)), ntk, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(kernel_fn(X1, X2, "NNGP", PARAMS)), nngp, rtol=1e-12)
    both = kernel_fn(X1, X2, ("ntk", "nngp"), PARAMS)
    assert type(both).__name__ == "EmpiricalKernel" and both._fields == ("ntk", "nngp")
    np.testing.assert_allclose(np.asarray(both.ntk), ntk, rtol=1e-10)
    default = kernel_fn(X1, X2, None, PARAMS)
    assert default._fields == ("nngp", "ntk")
    np.testing.assert_allclose(np.asarray(default.nngp), nngp, rtol=1e-12)


def test_kernel_fn_pytree_outputs_give_a_pytree_of_namedtuples():
    f = lambda p, x: (net(p, x), jnp.cos(x @ p["w"]))
    out = ntkc.empirical_kernel_fn(f)(X1, None, ("nngp",), PARAMS)
    assert isinstance(out, tuple) and len(out) == 2 and out[1]._fields == ("nngp",)
    np.testing.assert_allclose(np.asarray(out[1].nngp),
                               reference_nngp(f, X1, None, PARAMS, (-1,), ())[1], rtol=1e-12)


@pytest.mark.parametrize("get,error", [("ntkgp", ValueError), ((), ValueError),
                                       (("ntk", "ntk"), ValueError), (3, TypeError)])
def test_kernel_fn_rejects_a_bad_get(get, error):
    with pytest.raises(error, match="get"):
        ntkc.empirical_kernel_fn(net)(X1, None, get, PARAMS)


def test_pseudo_ntk_is_the_ntk_of_the_scaled_logit_sum():
    g = lambda p, x: jnp.sum(net(p, x), -1) / np.sqrt(4)
    got = ntkc.pseudo_ntk_fn(net)(X1, X2, PARAMS)                  # (N1, N2, X1, X2)
    want = ntkc.testing.reference_ntk(g, X1, X2, PARAMS, trace_axes=())
    assert got.shape == (5, 3, 2, 2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
    traced = ntkc.pseudo_ntk_fn(net, trace_axes=(-1,), vmap_axes=0, method="jacobian")
    np.testing.assert_allclose(np.asarray(traced(X1, None, PARAMS)),
                               ntkc.testing.reference_ntk(g, X1, None, PARAMS), rtol=1e-10)


def test_pseudo_ntk_other_logits_axis_and_bad_axis():
    g = lambda p, x: jnp.sum(net(p, x), 1) / np.sqrt(2)
    got = ntkc.pseudo_ntk_fn(net, logits_axis=1)(X1, None, PARAMS)
    np.testing.assert_allclose(np.asarray(got), ntkc.testing.reference_ntk(g, X1, None, PARAMS, ()),
                               rtol=1e-10)
    with pytest.raises(ValueError, match="logits_axis"):
        ntkc.pseudo_ntk_fn(net, logits_axis=5)(X1, None, PARAMS)
