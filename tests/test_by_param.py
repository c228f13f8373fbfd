"""ntk_fn(..., by_param=True): each parameter leaf's kernel, summing to the full kernel."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc


def shared_net(p, x):  # W1 is used twice (weight sharing); a pytree output
    h = jnp.tanh(x @ p["W1"] + p["b1"][None])
    return {"a": h @ p["W2"], "b": (h @ p["W1"].T)[:, :2]}


R = np.random.default_rng(0)
PARAMS = {"W1": R.standard_normal((3, 4)), "b1": R.standard_normal(4), "W2": R.standard_normal((4, 2))}
X1, X2 = R.standard_normal((3, 3)), R.standard_normal((2, 3))


@functools.cache
def leaf_reference(k, leaf):
    """The NTK in one parameter leaf alone (the others fixed), float64."""
    f_leaf = lambda q, x: shared_net({**PARAMS, leaf: q}, x)[k]
    return ntkc.testing.reference_ntk(f_leaf, X1, X2, PARAMS[leaf], ())


@pytest.mark.parametrize("method,vmap_axes", [
    ("jacobian", None), ("jacobian", 0), ("ntvp", None), ("ntvp", 0),
    ("structured", None), ("structured", 0), ("auto", 0)])
def test_per_leaf_kernels_sum_to_the_kernel(method, vmap_axes):
    params, x1, x2 = PARAMS, X1, X2
    out = ntkc.ntk_fn(shared_net, (), vmap_axes=vmap_axes, method=method, by_param=True)(
        x1, x2, params)
    full = ntkc.ntk_fn(shared_net, (), vmap_axes=vmap_axes, method=method)(x1, x2, params)
    for k in ("a", "b"):
        assert jax.tree.structure(out[k]) == jax.tree.structure(params)
        np.testing.assert_allclose(sum(jax.tree.leaves(out[k])), full[k], rtol=1e-10, atol=1e-12)
        for leaf in params:  # the leaf's kernel is the NTK in that leaf alone
            np.testing.assert_allclose(np.asarray(out[k][leaf]), leaf_reference(k, leaf),
                                       rtol=1e-9, atol=1e-12)
