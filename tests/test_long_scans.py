"""Long scans stay rolled (issue 14, item 2): loops longer than passes/unroll.MAX_LENGTH keep
their loop, and ntkc/passes/rolled.py moves the parameter uses out of the body (computed for all
iterations at once), so that stacked weights give one term summed over iterations, weights closed
over give the weight-shared sum over every pair of iterations, and the cotangent pass transposes
the loop (a rolled reverse scan carrying the cotangents of the carry). Every model runs under
strict=True (no dense fallback) and equals the float64 reference."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from grids import all_pairs
from ntkc.passes import unroll
from ntkc.passes.inline import inline
from ntkc.testing import reference_ntk
from ntkc.trace import Traced, trace_linear

R = np.random.default_rng(0)
DEPTH, STEPS, WIDTH = 48, 64, 5
assert min(DEPTH, STEPS) > unroll.MAX_LENGTH  # these loops are not unrolled


def normal(*shape, scale=1.0):
    return R.standard_normal(shape) * scale


def stack(p, x):
    """A residual tanh stack scanned over stacked weights and biases (unroll=2); the per-layer
    means (ys) feed the output besides the carry."""
    def layer(h, wb):
        w, b = wb
        return h + jnp.tanh(h @ w + jnp.broadcast_to(b, h.shape)), h.mean(-1)

    h, means = lax.scan(layer, x @ p["w_in"], (p["w"], p["b"]), unroll=2)
    return h @ p["v"] + means.mean(0)[..., None]


def rnn(p, x):
    """An RNN cell whose weights are closed over (shared by every step), run backwards from a
    learned initial state over x's time axis (-2); every step's state feeds the output."""
    def cell(h, xt):
        h = jnp.tanh(h @ p["u"] + xt @ p["w_in"] + jnp.broadcast_to(p["b"], h.shape))
        return h, h

    h0 = jnp.broadcast_to(p["h0"], x.shape[:-2] + (WIDTH,))
    h, hs = lax.scan(cell, h0, jnp.moveaxis(x, -2, 0), reverse=True)
    return h @ p["v"] + hs.mean(0) @ p["v"]


STACK = {"w_in": normal(4, WIDTH, scale=0.5), "w": normal(DEPTH, WIDTH, WIDTH, scale=0.1),
         "b": normal(DEPTH, WIDTH, scale=0.1), "v": normal(WIDTH, 3)}
RNN = {"u": normal(WIDTH, WIDTH, scale=0.4), "w_in": normal(4, WIDTH, scale=0.5),
       "b": normal(WIDTH, scale=0.1), "h0": normal(WIDTH), "v": normal(WIDTH, 3)}
X_STACK = (normal(3, 4), normal(2, 4))
X_SEQ = (normal(3, STEPS, 4), normal(2, STEPS, 4))
MODELS = {"stack": (stack, STACK, X_STACK), "rnn": (rnn, RNN, X_SEQ)}

CASES = all_pairs(MODELS, [(), (-1,)], [0, None], [True, False])


def check(f, params, xs, trace_axes=(-1,), vmap_axes=0, symmetric=True, diagonal_axes=(),
          method="structured", rtol=1e-9):
    x1, x2 = xs[0], None if symmetric else xs[1]
    got = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=vmap_axes, method=method,
                      strict=method == "structured")(x1, x2, params)
    want = reference_ntk(f, x1, x2, params, trace_axes, diagonal_axes)
    assert np.abs(want).max() > 1e-3  # a kernel worth comparing
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("model, trace_axes, vmap_axes, symmetric", CASES)
def test_structured_under_strict(model, trace_axes, vmap_axes, symmetric):
    f, params, xs = MODELS[model]
    check(f, params, xs, trace_axes, vmap_axes, symmetric)


@pytest.mark.parametrize("model", MODELS)
def test_diagonal_axes(model):
    f, params, xs = MODELS[model]
    x2 = xs[1][:1] if model == "stack" else xs[0][::-1]  # the diagonal needs equal batches
    check(f, params, (xs[0][:1] if model == "stack" else xs[0], x2), (), 0, False, (0,))


@pytest.mark.parametrize("method, model, symmetric",
                         all_pairs(["jacobian", "ntvp", "auto"], MODELS, [True, False]))
def test_every_method(method, model, symmetric):
    f, params, xs = MODELS[model]
    check(f, params, xs, (-1,), 0, symmetric, method=method)


def fori_stack(p, x):
    """fori_loop over the layers, the stacked weights closed over and indexed by the counter:
    w[i] becomes a gather of one row per iteration once moved out of the loop (a row lookup)."""
    def layer(i, h):
        return h + jnp.tanh(h @ p["w"][i] + jnp.broadcast_to(p["b"][i], h.shape))

    return lax.fori_loop(0, DEPTH, layer, x @ p["w_in"]) @ p["v"]


@pytest.mark.parametrize("vmap_axes, symmetric", [(0, True), (0, False), (None, False)])
def test_fori_loop_over_stacked_weights(vmap_axes, symmetric):
    check(fori_stack, STACK, X_STACK, (-1,), vmap_axes, symmetric)


def test_a_scan_inside_a_long_scan():
    """A 36-step scan inside every layer of a 40-layer scan: the inner loop, vmapped out of the
    outer one, has its uses hoisted in the next round."""
    def nested(p, x):
        def layer(h, w):
            c, _ = lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h, None, length=36)
            return h + c, None

        h, _ = lax.scan(layer, x @ p["w_in"], p["w"][:40])
        return h @ p["v"]

    check(nested, STACK, X_STACK, (), 0, False)


def test_the_plan_is_structured_and_the_loop_stays_rolled():
    f, params, (x1, x2) = MODELS["rnn"]
    plan = ntkc.plan(f, x1, x2, params, vmap_axes=0, method="structured", strict=True)
    assert not plan.fallbacks and "dense fallback" not in repr(plan)
    assert all(t.method != "dense" for t in plan.terms)
    assert {t.leaf for t in plan.terms} == {"['u']", "['w_in']", "['b']", "['h0']", "['v']"}
    assert plan.cotangents.flops > 0 and all(t.cost.flops > 0 for t in plan.terms)
    # the weight-shared sum over every pair of steps: one contraction per pair of uses, not one
    # per pair of steps
    assert sum(t.leaf == "['u']" for t in plan.terms) == 1
    stacked = ntkc.plan(stack, X_STACK[0], None, STACK, vmap_axes=0, method="structured",
                        strict=True)
    assert sum(t.leaf == "['w']" for t in stacked.terms) == 1  # summed over the 48 layers


def _analysed(f, params, x):
    """The linear map the structured method analyses for one example of x."""
    traced = trace_linear(lambda p, ins: [f(p, ins[0])], params, [x])
    return unroll.unroll_scans(Traced(inline(traced.jaxpr), traced.n_params, traced.n_inputs))


@pytest.mark.parametrize("model", MODELS)
def test_the_program_does_not_grow_with_the_length(model):
    f, params, xs = MODELS[model]
    longer = {**params, "w": np.concatenate([params["w"]] * 2),
              "b": np.concatenate([params["b"]] * 2)} if model == "stack" else params
    x = xs[0][0]
    x_longer = x if model == "stack" else np.concatenate([x, x])
    short, long = _analysed(f, params, x), _analysed(f, longer, x_longer)
    eqns = lambda t: [e.primitive.name for e in t.jaxpr.jaxpr.eqns]
    assert eqns(short) == eqns(long) and "scan" in eqns(short)


def test_a_use_without_a_rule_falls_back_alone():
    """A long loop's body whose weights pass through a primitive with no rule (a triangular
    solve): that equation alone takes the dense rule, hoisted out of the loop; the loop itself
    is not a fallback."""
    lower = np.eye(WIDTH) + np.tril(normal(WIDTH, WIDTH, scale=0.1), -1)

    def solved(p, x):
        def layer(h, w):
            return h + jnp.tanh(h @ lax.linalg.triangular_solve(lower, w, left_side=True,
                                                                lower=True)), None

        h, _ = lax.scan(layer, x @ p["w_in"], p["w"])
        return h @ p["v"]

    plan = ntkc.plan(solved, X_STACK[0], None, STACK, vmap_axes=0, method="structured")
    assert [(fb.primitive, fb.leaf) for fb in plan.fallbacks] == [("triangular_solve", "['w']")]
    with pytest.raises(ntkc.UnsupportedPrimitiveError, match="triangular_solve"):
        ntkc.ntk_fn(solved, vmap_axes=0, method="structured", strict=True)(X_STACK[0], None,
                                                                           STACK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ntkc.ntk_fn(solved, vmap_axes=0, method="structured")(*X_STACK, STACK)
    np.testing.assert_allclose(got, reference_ntk(solved, *X_STACK, STACK), rtol=1e-9,
                               atol=1e-11)
