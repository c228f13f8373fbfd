"""linearize and taylor_expand against Taylor series computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ntkc


@pytest.mark.quick
@pytest.mark.parametrize("degree", range(6))
def test_taylor_of_a_polynomial_matches_its_hand_expansion(degree):
    f = lambda p, x: x * (p**4 - 2.0 * p)        # derivatives at p0: 4p³-2, 12p², 24p, 24
    p0, p, x = 1.5, 1.9, 0.7
    d = p - p0
    terms = [p0**4 - 2 * p0, 4 * p0**3 - 2, 12 * p0**2, 24 * p0, 24.0, 0.0]
    want = x * sum(terms[k] * d**k / math.factorial(k) for k in range(degree + 1))
    got = ntkc.taylor_expand(f, p0, degree)(p, x)
    np.testing.assert_allclose(float(got), want, rtol=1e-13)
    if degree >= 4:                                # a quartic is its own 4th-order expansion
        np.testing.assert_allclose(float(got), float(f(p, x)), rtol=1e-13)


R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 4)), "b": R.standard_normal(4), "v": R.standard_normal((4, 2))}
NEW = jax.tree.map(lambda a: a + 0.1 * R.standard_normal(a.shape), PARAMS)
X = R.standard_normal((5, 3))


def mlp(p, x, scale=1.0):
    return scale * jnp.tanh(x @ p["w"] + p["b"][None]) @ p["v"]


def hand_terms(x, scale):
    """f0, J·δ and δᵀHδ of the MLP at PARAMS along δ = NEW - PARAMS, by jacfwd on flat params."""
    flat0, unravel = ravel_pytree(PARAMS)
    delta = ravel_pytree(NEW)[0] - flat0
    g = lambda q: mlp(unravel(q), x, scale=scale)
    jac = jax.jacfwd(g)(flat0)                            # (5, 2, P)
    hess = jax.jit(jax.jacfwd(jax.jacfwd(g)))(flat0)      # (5, 2, P, P)
    return g(flat0), jac @ delta, jnp.einsum("abpq,p,q->ab", hess, delta, delta)


def test_linearize_and_second_order_match_jacfwd_terms_on_an_mlp():
    f0, first, second = hand_terms(X, 2.0)
    expand = lambda d: jax.jit(ntkc.taylor_expand(mlp, PARAMS, d), static_argnames="scale")
    lin = jax.jit(ntkc.linearize(mlp, PARAMS), static_argnames="scale")(NEW, X, scale=2.0)
    np.testing.assert_allclose(np.asarray(lin), f0 + first, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(expand(1)(NEW, X, scale=2.0)), f0 + first,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(expand(2)(NEW, X, scale=2.0)), f0 + first + second / 2,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(expand(0)(NEW, X, scale=1.0)), f0 / 2, rtol=1e-12)
    # the third order is closer to f than the second for a small step
    exact = mlp(NEW, X)
    err = lambda d: float(jnp.abs(expand(d)(NEW, X, scale=1.0) - exact).max())
    assert err(3) < err(2)


def test_linearize_is_jittable_and_exact_at_the_expansion_point():
    f_lin = jax.jit(ntkc.linearize(mlp, PARAMS))
    np.testing.assert_allclose(np.asarray(f_lin(PARAMS, X)), np.asarray(mlp(PARAMS, X)), rtol=1e-14)


@pytest.mark.parametrize("degree,error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_taylor_expand_rejects_a_bad_degree(degree, error):
    with pytest.raises(error, match="degree"):
        ntkc.taylor_expand(mlp, PARAMS, degree)


def test_a_new_params_structure_is_an_error():
    with pytest.raises(ValueError, match="structure"):
        ntkc.linearize(mlp, PARAMS)({"w": PARAMS["w"]}, X)
