"""ntkc.passes.pairwise: a long contraction with a small result as a K-major matrix product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc.passes import pairwise
from ntkc.testing import reference_ntk


@pytest.fixture
def short_threshold(monkeypatch):
    """Thresholds small enough for test-sized arrays."""
    monkeypatch.setattr(pairwise, "SMALL_RESULT", 64)
    monkeypatch.setattr(pairwise, "LONG_CONTRACTION", 32)
    monkeypatch.setattr(pairwise, "MIN_SIDE", 2)


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


# (a labels, a shape, b labels, b shape, kept, whether the step is long)
CASES = [
    # a Gram of weight gradients: [N·O, K] x [N·O, K]ᵀ over two contracted labels
    ("nokc", (2, 3, 8, 5), "mpkc", (2, 3, 8, 5), "nomp", True),
    # the result's labels in another order than the operands'
    ("nokc", (2, 3, 8, 5), "mpkc", (2, 3, 8, 5), "pmon", True),
    # contracted labels in different orders in the two operands
    ("kac", (8, 4, 5), "cbk", (5, 4, 8), "ab", True),
    # a batch label (in both operands and the result): not a plain matrix product
    ("nkc", (2, 8, 5), "nkd", (2, 8, 5), "ncd", False),
    # a label summed in one operand alone
    ("akz", (4, 40, 3), "bk", (4, 40), "ab", False),
    # a short contraction
    ("ak", (4, 6), "bk", (4, 6), "ab", False),
    # a large result
    ("ak", (16, 40), "bk", (16, 40), "ab", False),
    # a vector: one operand has no free label (a traced Gram's last step)
    ("ak", (4, 40), "k", (40,), "a", False),
    # an outer product (nothing contracted)
    ("a", (4,), "b", (4,), "ab", False),
]


@pytest.mark.parametrize("la, sa, lb, sb, kept, long", CASES)
def test_contract_pair_equals_einsum(short_threshold, la, sa, lb, sb, kept, long):
    a, b = _random(sa, 0), _random(sb, 1)
    sizes = dict(zip(la, sa)) | dict(zip(lb, sb))
    assert pairwise.is_long(la, lb, kept, sizes) == long
    got = pairwise.contract_pair(a, list(la), b, list(lb), list(kept))
    want = jnp.einsum(f"{la},{lb}->{kept}", a, b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the long form is one dot_general of two matrices, the operands' K axes first
    dots = [e for e in jax.make_jaxpr(lambda a, b: pairwise.contract_pair(
        a, list(la), b, list(lb), list(kept)))(a, b).eqns if e.primitive.name == "dot_general"]
    if long:
        (dot,) = dots
        assert dot.params["dimension_numbers"] == (((0,), (0,)), ((), ()))
        assert all(v.aval.ndim == 2 for v in dot.invars)


def test_run_path_equals_einsum(short_threshold):
    ops = [_random((2, 3, 6), 0), [0, 1, 2], _random((2, 6, 8), 1), [0, 2, 3],
           _random((4, 5, 6), 2), [4, 5, 2], _random((4, 6, 8), 3), [4, 2, 3]]
    out = [0, 1, 4, 5]
    path = [(0, 1), (0, 1), (0, 1)]  # each side's product, then their Gram over (2, 3): long
    got = pairwise.run_path(ops, out, path)
    want = jnp.einsum(*ops, out)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_structured_kernel_with_long_steps_matches_the_reference(short_threshold,
                                                                     monkeypatch):
    """A CNN whose terms' Grams are long steps at these thresholds, x2=None and given, traced
    and untraced, against the float64 reference."""
    taken = []
    is_long = pairwise.is_long
    monkeypatch.setattr(pairwise, "is_long", lambda *a: taken.append(is_long(*a)) or taken[-1])

    def f(params, x):
        y = jax.lax.conv_general_dilated(x, params["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y).reshape(x.shape[0], -1) @ params["v"]

    params = {"w": _random((3, 3, 2, 4), 0), "v": _random((6 * 6 * 4, 3), 1) / 12}
    x1, x2 = _random((3, 6, 6, 2), 2), _random((2, 6, 6, 2), 3)
    for trace_axes in ((), (-1,)):
        for second in (None, x2):
            got = ntkc.ntk_fn(f, trace_axes, vmap_axes=0, method="structured")(x1, second, params)
            want = reference_ntk(f, x1, second, params, trace_axes=trace_axes)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert any(taken)  # some step ran as a K-major matrix product
