"""The float64 reference itself: J1 J2ᵀ by hand on a linear model, and its Jacobian cache
(one compilation per function and input structure) never mixes up keyword or static values."""

import jax.numpy as jnp
import numpy as np
import pytest

from ntkc.testing import reference_ntk

R = np.random.default_rng(0)
W = R.standard_normal((3, 2))
X1, X2 = R.standard_normal((4, 3)), R.standard_normal((5, 3))


def linear(p, x, scale=1.0):
    return scale * x @ p


def tagged(p, inputs):
    x, power = inputs  # power: a Python int leaf, not differentiated
    return x @ p**power


@pytest.mark.quick
def test_linear_model_by_hand():
    # d(x @ W)[n, o] / dW[i, o'] = x[n, i] δ(o, o'): Θ[n, m, o, o'] = (x1 x2ᵀ)[n, m] δ(o, o')
    want = np.einsum("ni,mi,op->nmop", X1, X2, np.eye(2))
    np.testing.assert_allclose(reference_ntk(linear, X1, X2, W, ()), want, rtol=1e-12)
    np.testing.assert_allclose(reference_ntk(linear, X1, None, W, (-1,)), X1 @ X1.T,
                               rtol=1e-12)


@pytest.mark.quick
def test_cached_jacobians_follow_keywords_and_static_leaves():
    for scale in (1.0, 2.0, 3.0):  # hashable keyword values: cached per value
        np.testing.assert_allclose(reference_ntk(linear, X1, X2, W, scale=scale),
                                   scale**2 * X1 @ X2.T, rtol=1e-12)
    for scale in (jnp.float64(2.0), np.array(3.0)):  # arrays: unhashable, compiled afresh
        np.testing.assert_allclose(reference_ntk(linear, X1, X2, W, scale=scale),
                                   float(scale)**2 * X1 @ X2.T, rtol=1e-12)
    for power in (1, 2):  # the same structure, another static leaf value
        got = reference_ntk(tagged, (X1, power), (X2, power), W, ())
        jac = lambda x: np.einsum("ni,io,op->noip", x, power * W**(power - 1), np.eye(2))
        want = np.einsum("noip,mqip->nmoq", jac(X1), jac(X2))
        np.testing.assert_allclose(got, want, rtol=1e-12)
