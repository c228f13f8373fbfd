"""ntkc._leaves: replacing array leaves, and a function restricted to some parameter leaves
(its kernel is those leaves' part of the kernel, which by_param returns)."""

import jax.numpy as jnp
import numpy as np

import ntkc
from ntkc import _leaves
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)
PARAMS = {"a": R.standard_normal((3, 5)), "b": R.standard_normal(5), "c": R.standard_normal((5, 2))}
X = R.standard_normal((4, 3))


def f(p, x, scale=1.0):
    return jnp.tanh(x @ p["a"] + p["b"][None]) @ p["c"] * scale


def test_replace_leaves():
    assert _leaves.replace_leaves([1, 2, 3, 4], [3, 1], ["d", "b"]) == [1, "b", 3, "d"]
    assert _leaves.replace_leaves((1, 2), [], []) == [1, 2]


def test_restrict_is_the_leaves_part_of_the_kernel():
    g, group = _leaves.restrict(f, PARAMS, [0, 2])  # "a" and "c" in jax.tree.leaves order
    assert [x.shape for x in group] == [(3, 5), (5, 2)]
    np.testing.assert_array_equal(g(group, X, scale=2.0), f(PARAMS, X, scale=2.0))
    by_param = ntkc.ntk_fn(f, method="jacobian", by_param=True)(X, None, PARAMS)
    np.testing.assert_allclose(reference_ntk(g, X, None, group), by_param["a"] + by_param["c"],
                               rtol=1e-10, atol=1e-12)
