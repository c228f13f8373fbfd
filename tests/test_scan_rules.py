"""Structured derivatives through lax.scan (issue 14, item 2): short loops are unrolled
(ntkc/passes/unroll.py), stacked weights become static slices of their leaf (a selection in the
use's chain: one term per layer, as for the unrolled stack), weights closed over by the loop give
the weight-shared sum over iterations, and cotangents flow back through the carry. Every model
runs under strict=True (no dense fallback) and equals the float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc.passes import unroll
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)
normal = lambda *shape: R.standard_normal(shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1)


def residual_stack(p, x):  # stacked layers scanned over
    h, _ = lax.scan(lambda h, w: (h + jnp.tanh(h @ w), None), x @ p["w_in"], p["w"])
    return h @ p["v"]


def rnn(p, x):  # x: (N, T, D); the cell's weights closed over, the inputs scanned
    def cell(h, xt):
        h = jnp.tanh(h @ p["u"] + xt @ p["w_in"])
        return h, h.sum(-1)

    h, ys = lax.scan(cell, jnp.zeros((x.shape[0], 6)), jnp.swapaxes(x, 0, 1), reverse=True,
                     unroll=2)
    return h @ p["v"] + ys.mean(0)[:, None]


STACK = {"w_in": normal(5, 6), "w": normal(3, 6, 6), "v": normal(6, 2)}
RNN = {"u": normal(6, 6), "w_in": normal(5, 6), "v": normal(6, 2)}
X_STACK = (R.standard_normal((4, 5)), R.standard_normal((3, 5)))
X_SEQ = (R.standard_normal((4, 4, 5)), R.standard_normal((3, 4, 5)))

CASES = [(trace, vmap, symmetric) for trace in [(), (-1,)] for vmap in [0, None]
         for symmetric in [True, False]]


def check(f, params, xs, trace_axes, vmap_axes, symmetric, diagonal_axes=(), rtol=1e-9):
    x1, x2 = xs[0], None if symmetric else xs[1]
    got = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=vmap_axes, method="structured",
                      strict=True)(x1, x2, params)
    want = reference_ntk(f, x1, x2, params, trace_axes, diagonal_axes)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 1e-2),
                 got, want)


@pytest.mark.quick
@pytest.mark.parametrize("trace_axes, vmap_axes, symmetric", CASES)
def test_scanned_residual_stack(trace_axes, vmap_axes, symmetric):
    check(residual_stack, STACK, X_STACK, trace_axes, vmap_axes, symmetric)


@pytest.mark.parametrize("trace_axes, vmap_axes, symmetric", CASES)
def test_rnn_closed_over_weights_reverse_and_unroll(trace_axes, vmap_axes, symmetric):
    check(rnn, RNN, X_SEQ, trace_axes, vmap_axes, symmetric)


def test_diagonal_axes_through_a_scan():
    check(residual_stack, STACK, X_STACK, (), 0, True, diagonal_axes=(0,))


def test_one_term_per_layer_of_stacked_weights():
    plan = ntkc.plan(residual_stack, X_STACK[0], X_STACK[1], STACK, vmap_axes=0,
                     method="structured", strict=True)
    layers = [t for t in plan.terms if t.leaf == "['w']"]
    assert len(layers) == 3  # the pairs of different layers vanish: no term for them
    assert all(t.method == "structured" for t in layers) and not plan.fallbacks


def test_a_loop_longer_than_the_unroll_limit_stays_rolled_without_fallback():
    """Longer loops keep their loop; their uses are hoisted out (tests/test_long_scans.py)."""
    depth = unroll.MAX_LENGTH + 1
    params = {**STACK, "w": normal(depth, 6, 6) / 4}
    plan = ntkc.plan(residual_stack, X_STACK[0], None, params, vmap_axes=0, method="structured",
                     strict=True)
    assert not plan.fallbacks
    assert sum(t.leaf == "['w']" for t in plan.terms) == 1  # one term, summed over the layers


# --------------------------------------------------------------------- framework models

def flax_scan_transformer():
    """A Flax transformer whose blocks (attention, LayerNorm, MLP) run under nn.scan (flax is
    imported here: the quick tests also run where it is not installed)."""
    import flax.linen as nn

    class FlaxBlock(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            y = nn.LayerNorm()(h)
            q, k = nn.Dense(8)(y), nn.Dense(8)(y)
            attention = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / np.sqrt(8), -1)
            h = h + nn.Dense(8)(attention @ y)
            return h + nn.Dense(8)(jax.nn.gelu(nn.Dense(16)(nn.LayerNorm()(h)))), None

    class FlaxScanTransformer(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: (N, tokens, 8)
            blocks = nn.scan(FlaxBlock, variable_axes={"params": 0},
                             split_rngs={"params": True}, length=2)
            h, _ = blocks()(x, None)
            return nn.Dense(3)(h.mean(-2))

    return FlaxScanTransformer()


def test_flax_nn_scan_transformer():
    model = flax_scan_transformer()
    x = R.standard_normal((3, 4, 8))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    f = lambda p, x: model.apply({"params": p}, x)
    check(f, params, (x, R.standard_normal((2, 4, 8))), (-1,), 0, False, rtol=1e-8)


@pytest.mark.parametrize("cell_name", ["LSTMCell", "GRUCell"])
def test_flax_lstm_and_gru(cell_name):
    import flax.linen as nn

    cell = getattr(nn, cell_name)
    # float64 carries: the tests run with x64, and the reference in float64
    model = nn.Sequential([nn.RNN(cell(features=5, param_dtype=jnp.float64)),
                           lambda h: h[:, -1], nn.Dense(2)])
    x = R.standard_normal((3, 4, 2))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    f = lambda p, x: model.apply({"params": p}, x)
    check(f, params, (x, R.standard_normal((2, 4, 2))), (), 0, False, rtol=1e-8)


def test_equinox_filter_vmap_and_scan_stack():
    import equinox as eqx

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    make = lambda k: eqx.nn.Linear(6, 6, key=k)
    stacked = eqx.filter_vmap(make)(keys)
    params, static = eqx.partition(stacked, eqx.is_array)

    def f(p, x):
        def layer(h, weights):
            return h + jnp.tanh(eqx.combine(weights, static)(h)), None

        h, _ = lax.scan(layer, x, p)
        return h[:2]

    batched = lambda p, x: jax.vmap(lambda example: f(p, example))(x)  # equinox is per example
    check(batched, params, (R.standard_normal((4, 6)), R.standard_normal((3, 6))), (), 0, False,
          rtol=1e-8)
