"""Custom derivatives and control flow in f, by every method, against the float64 reference.

ntkc differentiates f as jax.grad does: through a custom_vjp function by the user's bwd, through a
custom_jvp function by the user's jvp rule (so a straight-through estimator's kernel is that of
its custom derivative). The reference (``ntkc.testing.reference_ntk``) uses reverse mode only,
so it honours custom_vjp functions too.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc.passes.capability import ReverseModeError

METHODS = ("auto", "structured", "jacobian", "ntvp")
# (trace_axes, diagonal_axes, vmap_axes): every method is run under each
SETTINGS = [((), (), None), ((-1,), (), 0), ((-1,), (0,), None), ((), (0,), 0)]


def normal(i, shape, scale=1.0):
    return scale * np.random.default_rng(i).standard_normal(shape)


def ntk(f, x, params, method, setting):
    trace, diag, vmap = setting
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dense-fallback reports are tested on their own
        return ntkc.ntk_fn(f, trace, diag, vmap, method=method)(x, None, params)


def check(f, x, params, method, setting, reference=None):
    trace, diag, _ = setting
    ref = ntkc.testing.reference_ntk(reference or f, x, None, params, trace, diag)
    out = ntk(f, x, params, method, setting)
    assert np.shape(out) == np.shape(ref)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-7, atol=1e-9)


# --- custom_vjp -------------------------------------------------------------------------------

@jax.custom_vjp
def softplus(x):
    return jnp.logaddexp(x, 0.0)


softplus.defvjp(lambda x: (softplus(x), x), lambda x, g: (g * jax.nn.sigmoid(x),))


@jax.custom_vjp
def scale(h, s):  # a parameter enters inside the custom_vjp function
    return h * s[None, :]


scale.defvjp(lambda h, s: (scale(h, s), (h, s)),
             lambda r, g: (g * r[1][None, :], jnp.sum(g * r[0], axis=0)))


def softplus_mlp(p, x):
    return scale(softplus(x @ p["w"]), p["s"]) @ p["v"]


MLP = dict(w=normal(0, (3, 4)), s=normal(1, (4,)), v=normal(2, (4, 2)))
X = normal(3, (3, 3))


def rotated(shift, per_method=1):
    """(method, setting) pairs: method i under settings i + shift (+ 2), so that each model
    meets every method and the settings are spread over the methods."""
    return [(m, SETTINGS[(i + shift + 2 * k) % len(SETTINGS)])
            for i, m in enumerate(METHODS) for k in range(per_method)]


@pytest.mark.parametrize("method, setting", [
    pytest.param(m, s, marks=pytest.mark.quick) if (m, s[0]) in {("structured", (-1,)),
                                                                   ("ntvp", ())}
    else (m, s) for m, s in rotated(0, per_method=2)])
def test_custom_vjp(method, setting):
    check(softplus_mlp, X, MLP, method, setting)


@jax.custom_vjp
def sign_ste(x):
    return jnp.sign(x)


sign_ste.defvjp(lambda x: (jnp.sign(x), None), lambda _, g: (g,))


def ste(p, x):
    return sign_ste(x @ p["w"]) @ p["v"]


@pytest.mark.parametrize("method, setting", rotated(1))
def test_straight_through(method, setting):
    params = dict(w=MLP["w"], v=MLP["v"])
    check(ste, X, params, method, setting)
    # the kernel of the custom derivative: w's part is that of sign replaced by the identity
    # in the backward pass, not 0 (the derivative of sign)
    trace, diag, _ = setting
    w_part = ntkc.testing.reference_ntk(lambda w, x: ste(dict(w=w, v=params["v"]), x), X, None,
                                        params["w"], trace, diag)
    assert np.abs(w_part).max() > 1e-3


# --- custom_jvp, checkpoint -------------------------------------------------------------------

@jax.custom_jvp
def silu(x):
    return x * jax.nn.sigmoid(x)


@silu.defjvp
def _silu_jvp(primals, tangents):  # nonlinear in x, a different formula from autodiff's
    (x,), (t,) = primals, tangents
    s = jax.nn.sigmoid(x)
    return silu(x), t * s * (1 + x * (1 - s))


@jax.custom_jvp
def tanh_layer(h, w):  # a parameter enters inside the custom_jvp function
    return jnp.tanh(h @ w)


@tanh_layer.defjvp
def _tanh_layer_jvp(primals, tangents):
    (h, w), (th, tw) = primals, tangents
    y = jnp.tanh(h @ w)
    return y, (1 - y * y) * (th @ w + h @ tw)


def custom_jvp_mlp(p, x):
    return silu(tanh_layer(x, p["w"])) @ p["v"]


def checkpointed(p, x):
    block = jax.checkpoint(lambda h: jnp.tanh(h @ p["w"]) @ p["u"],
                           policy=jax.checkpoint_policies.checkpoint_dots)
    return jnp.sin(block(x)) @ p["v"]


@pytest.mark.parametrize("method, setting", rotated(2))
def test_custom_jvp(method, setting):
    check(custom_jvp_mlp, X, dict(w=MLP["w"], v=MLP["v"]), method, setting)


@pytest.mark.parametrize("method, setting", rotated(3))
def test_checkpoint_policy(method, setting):
    check(checkpointed, X, dict(w=MLP["w"], u=normal(4, (4, 4)), v=MLP["v"]), method, setting)


# --- cond, switch, fori_loop ------------------------------------------------------------------

def switched(p, x):
    def one(xi):  # per example: a cond under vmap_axes=0, a select over the batch otherwise
        branches = [lambda h: jnp.tanh(h @ p["w"]), lambda h: jnp.sin(h @ p["w"]) * p["b"],
                    lambda h: h @ p["w"] + p["b"]]
        h = lax.switch(jnp.sum(xi > 0), branches, xi)
        h = lax.cond(xi[0] > 0, lambda h: h * p["b"], lambda h: jnp.cos(h), h)
        return h @ p["v"]
    return jax.vmap(one)(x)


def fori(p, x):
    h = lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["w"] + p["b"][None, :]), x @ p["u"])
    return h @ p["v"]


CONTROL = dict(w=normal(5, (3, 3)), u=normal(6, (3, 3)), b=normal(7, (3,)), v=MLP["v"][:3])
XC = normal(8, (4, 3))


@pytest.mark.parametrize("method, setting", rotated(4))
def test_cond_switch(method, setting):
    assert {0, 1, 2, 3} >= set(np.sum(XC > 0, axis=1).tolist())
    check(switched, XC, CONTROL, method, setting)


@pytest.mark.parametrize("method, setting", rotated(5))
def test_fori_loop(method, setting):
    check(fori, XC, CONTROL, method, setting)


def long_fori(p, x):  # longer than the loops the structured method unrolls
    h = lax.fori_loop(0, 40, lambda i, h: jnp.tanh(h @ p["w"] / 2 + p["b"][None, :]), x @ p["u"])
    return h @ p["v"]


def test_control_flow_fallback_reported():
    # a short fori loop (a scan of length 3) is unrolled, a long one stays rolled with its uses
    # hoisted out of the loop: rules, no fallback
    ntkc.ntk_fn(fori, method="structured", strict=True)(XC, None, CONTROL)
    got = ntkc.ntk_fn(long_fori, method="structured", strict=True)(XC, None, CONTROL)
    np.testing.assert_allclose(got, ntkc.testing.reference_ntk(long_fori, XC, None, CONTROL),
                               rtol=1e-9,
                               atol=1e-11)
    # a while loop into which only the parameters enter: its dense rule, reported
    with pytest.warns(UserWarning, match="no structured rule for primitive 'while'"):
        got = ntkc.ntk_fn(loop_on_params, method="structured")(XC, None, CONTROL)
    want = ntkc.testing.reference_ntk(loop_on_params_fori, XC, None, CONTROL)  # reversible
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


# --- while_loop -------------------------------------------------------------------------------

def loop_on_params(p, x):  # only the parameters enter the loop (x is not differentiated)
    h = lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.tanh(c[1] @ p["w"])),
                       (0, x))[1]
    return h @ p["v"]


def loop_on_params_fori(p, x):
    return lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["w"]), x) @ p["v"]


def loop_after_layer(p, x):  # a value computed from the parameters enters the loop
    h = lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.tanh(c[1] @ p["w"])),
                       (0, x @ p["u"]))[1]
    return h @ p["v"]


@jax.custom_vjp
def newton_sqrt(a):  # a while loop in the primal; the derivative comes from bwd
    return lax.while_loop(lambda c: c[0] < 20, lambda c: (c[0] + 1, 0.5 * (c[1] + a / c[1])),
                          (0, jnp.ones_like(a)))[1]


newton_sqrt.defvjp(lambda a: (newton_sqrt(a), newton_sqrt(a)), lambda r, g: (g / (2 * r),))


def sqrt_layer(p, x):
    return newton_sqrt(1 + (x @ p["w"]) ** 2) @ p["v"]


@pytest.mark.parametrize("method, setting", rotated(2))
def test_while_loop_inside_custom_vjp(method, setting):
    check(sqrt_layer, XC, CONTROL, method, setting)


def _assert_loop_error(err, fn):
    line = fn.__code__.co_firstlineno + 1
    message = str(err.value)
    assert f"test_custom_derivatives.py:{line}" in message
    assert "while_loop" in message and "fori_loop" in message and "scan" in message


@pytest.mark.parametrize("method", [pytest.param("jacobian", marks=pytest.mark.quick), "ntvp"])
def test_while_loop_error(method):
    with pytest.raises(ReverseModeError) as err:
        ntk(loop_on_params, XC, CONTROL, method, ((), (), None))
    _assert_loop_error(err, loop_on_params)
    assert f"method={method!r}" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("method", ["auto", "structured"])
@pytest.mark.parametrize("setting", SETTINGS[:2])
def test_while_loop_on_params(method, setting):
    # structured differentiates a loop that only parameters enter forward (its dense rule);
    # auto knows that jacobian and ntvp cannot, and picks structured
    check(loop_on_params, XC, CONTROL, method, setting, reference=loop_on_params_fori)


@pytest.mark.parametrize("method", METHODS)
def test_while_loop_after_layer_error(method):
    with pytest.raises(ReverseModeError) as err:
        ntk(loop_after_layer, XC, CONTROL, method, ((-1,), (), 0))
    _assert_loop_error(err, loop_after_layer)
    # auto and structured: structured's cotangent pass is blocked, so is every other method
    expected = "cotangent pass" if method in ("auto", "structured") else f"method={method!r}"
    assert expected in str(err.value)
