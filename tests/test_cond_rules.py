"""Structured derivatives through lax.cond / lax.switch that stay conditionals (issue 14, item
3): the tangent cond is flattened (ntkc/passes/conds.py), every branch's parameter uses get
their rules, and the equations of a branch that read residuals are guarded by the branch's
predicate (ntkc/rules/guarded.py), so that an untaken branch, which runs on uninitialized
residuals, contributes exact zeros. Every branch that is not taken here would give inf or NaN
if its values leaked (log of a negative, 1/0, sqrt of a negative). Every model runs under
strict=True for the structured method and equals the float64 reference, for every method."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)
METHODS = ("structured", "jacobian", "ntvp", "auto")


def normal(*shape):
    return R.standard_normal(shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1)


def switched(p, x, mode):
    """A switch on a keyword argument (one index per side), a cond on the parameters, and a
    cond nested in a branch."""
    h = jnp.tanh(x @ p["w"])
    branches = [
        lambda h: jnp.tanh(h @ p["u"]) * p["b"][None, :],
        # NaN and inf; h / 0 makes its transpose NaN whatever the residuals hold
        lambda h: jnp.log(-jnp.abs(h @ p["u"]) - 1) + 1 / (h * 0) + h / 0,
        lambda h: lax.cond(p["s"] > 0,  # nested: taken
                           lambda h: jnp.sin(h @ p["u"] + p["b"][None, :]),
                           lambda h: jnp.sqrt(-1 - jnp.abs(h @ p["u"])), h),
    ]
    h = lax.switch(mode, branches, h)
    h = lax.cond(p["s"] < 0, lambda h: jnp.log(-1 - jnp.abs(h)) @ p["u"] + h / 0,  # NaN
                 lambda h: h * p["b"][None, :] + h @ p["u"], h)
    return h @ p["v"]


PARAMS = {"w": normal(3, 4), "u": normal(4, 4), "b": normal(4), "v": normal(4, 2),
          "s": np.array(0.5)}
X1, X2 = R.standard_normal((4, 3)), R.standard_normal((3, 3))
# (trace_axes, diagonal_axes, vmap_axes, symmetric)
SETTINGS = [((), (), None, False), ((-1,), (), 0, True), ((), (0,), 0, True),
            ((-1,), (0,), None, True), ((), (), (0, 0, {"mode": None}), False)]


def kernel(f, x1, x2, params, method, setting, **kwargs):
    trace, diagonal, vmap_axes, _ = setting
    strict = dict(strict=True) if method == "structured" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dense fallback, in any method
        return ntkc.ntk_fn(f, trace, diagonal, vmap_axes, method=method, **strict)(
            x1, x2, params, **kwargs)


@functools.cache
def with_kwargs(f):
    """f of (x, keyword arguments); one function object per f, so that the reference's
    compilations are shared between the tests of one model."""
    return lambda p, xk: f(p, xk[0], **xk[1])


def reference(f, x1, x2, params, setting, kw1, kw2):
    """The float64 reference with each side's keyword arguments (carried in x)."""
    trace, diagonal, _, _ = setting
    return reference_ntk(with_kwargs(f), (x1, kw1), None if x2 is None else (x2, kw2), params,
                         trace, diagonal)


def check(f, params, setting, method, kw1, kw2=None, x1=X1, x2=X2):
    x2 = None if setting[3] else x2
    kw2 = kw1 if kw2 is None else kw2
    kwargs = {k: (v, kw2[k]) if kw2[k] is not v else v for k, v in kw1.items()}
    got = kernel(f, x1, x2, params, method, setting, **kwargs)
    want = reference(f, x1, x2, params, setting, kw1, kw2)
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-11)


def rotated(shift, per_method=1, settings=SETTINGS):
    """(method, setting) pairs: each method under settings spread over ``settings``, so that
    every method and every setting are met without the full product."""
    return [(m, settings[(i + shift + 2 * k) % len(settings)])
            for i, m in enumerate(METHODS) for k in range(per_method)]


# each method under two settings, one per branch taken
@pytest.mark.parametrize("method, setting, mode", [
    (method, setting, (0, 2)[i % 2]) for i, (method, setting) in enumerate(rotated(0, 2))])
def test_switch_on_a_keyword_argument(method, setting, mode):
    check(switched, PARAMS, setting, method, {"mode": jnp.int32(mode)})


@pytest.mark.parametrize("method", METHODS)
def test_each_side_takes_its_own_branch(method):
    """mode=(0, 2): x1's side takes branch 0, x2's branch 2 (kwargs split per side)."""
    setting = ((), (), (0, 0, {"mode": None}), False)
    check(switched, PARAMS, setting, method, {"mode": jnp.int32(0)}, {"mode": jnp.int32(2)})


def two_way(p, x):
    """A cond on the parameters, both branches finite when taken (each runs on garbage when
    not: its residuals are uninitialized)."""
    h = jnp.tanh(x @ p["w"])
    h = lax.cond(p["s"] > 0, lambda h: jnp.log1p(jnp.square(h @ p["u"])) * p["b"][None, :],
                 lambda h: jnp.tanh(h / (1 + jnp.square(h)) @ p["u"]), h)
    return h @ p["v"]


@pytest.mark.parametrize("sign, method", [(1, m) for m in METHODS] + [(-1, "structured"),
                                                                    (-1, "ntvp")])
def test_branch_on_the_parameters_either_way(sign, method):
    params = {**PARAMS, "s": np.array(0.5 * sign)}
    check(two_way, params, SETTINGS[1 if sign > 0 else 0], method, {})


FLAG = jnp.array(1)  # closed over by the model


def closed_over(p, x):
    h = lax.cond(FLAG > 0, lambda h: jnp.tanh(h @ p["w"]), lambda h: jnp.log(-1 - h @ p["w"]), x)
    # branch 0: an inf factor (h / 0, recomputed in the linear map under checkpoint) in a use
    # of its own (v transposed: not merged with the others' h @ v), and a NaN cotangent (its
    # transpose divides by 0)
    inf_factor = jax.checkpoint(lambda h, v: (v.T @ (h / 0).T).T)
    return lax.switch(FLAG + 1, [lambda h: inf_factor(h, p["v"]), lambda h: h @ p["v"] * 0,
                                 lambda h: h @ p["v"] + jnp.sum(h, -1, keepdims=True)], h)


@pytest.mark.parametrize("method, setting", rotated(1, settings=SETTINGS[:4]))
def test_index_from_a_closed_over_constant(method, setting):
    check(closed_over, {"w": PARAMS["w"], "v": PARAMS["v"]}, setting, method, {})


def test_uses_alike_in_several_branches_are_one_use():
    """switched: u enters the switch's branches 0 and 1 alike (h @ u), the two branches of the
    nested cond alike, and both branches of the last cond alike: three uses of u, not six."""
    from ntkc.passes.conds import flatten_conds
    from ntkc.passes.inline import inline
    from ntkc.passes.uses import find_uses
    from ntkc.trace import Traced, trace_linear

    traced = trace_linear(lambda p, ins: [switched(p, ins[0], ins[1])], PARAMS,
                          [X1, jnp.int32(0)])
    traced = flatten_conds(Traced(inline(traced.jaxpr), traced.n_params, traced.n_inputs))
    analysis = find_uses(traced)
    leaves = sorted(PARAMS)  # the order of the leaves of a dict
    assert len(analysis.uses_of_leaf(leaves.index("u"))) == 3
    assert len(analysis.uses_of_leaf(leaves.index("b"))) == 3  # the broadcasts of b: one each
    eqns = traced.jaxpr.jaxpr.eqns  # the primal conds stay (they compute the residuals)
    assert not any(eqns[k].primitive.name == "cond" for k in analysis.tangent)
    assert any(e.primitive.name == "cond" for e in eqns)


def test_no_fallback_and_a_term_per_branch_use():
    plan = ntkc.plan(switched, X1, X2, PARAMS, vmap_axes=0, method="structured", strict=True,
                     kwargs={"mode": jnp.int32(2)})
    assert not plan.fallbacks
    u_terms = [t for t in plan.terms if t.leaf == "['u']"]
    assert u_terms and all(t.method == "structured" for t in u_terms)
    assert all("(in a branch)" in s for t in u_terms for s in t.structure)
    assert len(u_terms) == 9  # three uses of u per side (see the test above)


def test_a_branch_primitive_without_a_rule_falls_back_exactly():
    """triangular_solve has no rule: its guarded equation takes the dense rule, masked too."""
    tri = np.tril(R.standard_normal((4, 4))) + 4 * np.eye(4)

    def f(p, x, mode):
        h = jnp.tanh(x @ p["w"])
        h = lax.switch(mode, [lambda h: jax.scipy.linalg.solve_triangular(tri, p["u"], lower=True)
                              @ h.T, lambda h: jnp.log(-1 - jnp.abs(h @ p["u"])).T], h)
        return h.T @ p["v"]

    params = {k: PARAMS[k] for k in ("w", "u", "v")}
    setting = ((), (), 0, False)
    with pytest.raises(ntkc.UnsupportedPrimitiveError, match="triangular_solve"):
        kernel(f, X1, X2, params, "structured", setting, mode=jnp.int32(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured")(X1, X2, params,
                                                                    mode=jnp.int32(0))
    want = reference(f, X1, X2, params, setting, {"mode": 0}, {"mode": 0})
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ntkc.plan(f, X1, X2, params, trace_axes=(), vmap_axes=0, method="structured",
                         kwargs={"mode": jnp.int32(0)})
    # the fallback is named by the primitive the branch computes, not its guard
    assert {fb.primitive for fb in plan.fallbacks} == {"triangular_solve"}


def per_example_select(p, x):
    """Under the user's vmap the predicate depends on the example: the cond becomes select_n of
    both branches. Each branch is finite where it is taken and NaN where it is not (log of
    x[0], of -x[0]); the NaN enters by a sum, so JAX's own derivative, and the reference, are
    finite."""
    def one(xi):
        h = jnp.tanh(xi @ p["w"])
        h = lax.cond(xi[0] > 0, lambda h: jnp.sin(h @ p["u"]) + jnp.log(xi[0]),
                     lambda h: jnp.tanh(h @ p["u"]) + jnp.log(-xi[0]), h)
        return h @ p["v"]
    return jax.vmap(one)(x)


@pytest.mark.parametrize("method, setting", rotated(2, per_method=2, settings=SETTINGS[:4]))
def test_per_example_predicate_under_vmap_is_select_n(method, setting):
    x1, x2 = X1.copy(), X2.copy()
    x1[:, 0], x2[:, 0] = [1, -1, 2, -0.5], [-1, 0.5, 1]
    params = {k: PARAMS[k] for k in ("w", "u", "v")}
    assert not np.all(np.isfinite(jax.vmap(lambda xi: jnp.log(xi[0]))(x1)))  # NaN untaken
    check(per_example_select, params, setting, method, {}, x1=x1, x2=x2)
    jaxpr = jax.make_jaxpr(per_example_select)(params, x1)
    assert "select_n" in str(jaxpr) and "cond[" not in str(jaxpr)


def _guarded_eqn(fn, *args):
    """The guarded equation wrapping fn's one equation, with a boolean g as operand 0."""
    from ntkc.rules.guarded import guard

    inner = jax.make_jaxpr(fn)(*args).jaxpr.eqns[0]
    jaxpr = jax.make_jaxpr(lambda g, *a: guard(g, inner, list(a)))(True, *args)
    return jaxpr.jaxpr.eqns[0]


@pytest.mark.parametrize("taken", [True, False])
def test_guarded_rule_masks_the_wrapped_rule(taken):
    """The rule of `guarded` is the wrapped primitive's, every factor masked by where (a
    one-hot factor's indices set past the end); its linear form and its dense fallback are the
    wrapped equation's values where the branch is taken, exact zeros where not, even on NaN."""
    from ntkc.ir import OneHot
    from ntkc.rules import apply_linear, dense_forms, lookup
    from ntkc.rules.guarded import unwrap

    x = np.full((2, 3), np.nan) if not taken else R.standard_normal((2, 3))
    w = R.standard_normal((3, 4))
    eqn = _guarded_eqn(lambda x, w: x @ w, x, w)
    assert eqn.primitive.name == "guarded" and unwrap(eqn).primitive.name == "dot_general"
    g = jnp.bool_(taken)
    params = dict(eqn.params)
    shapes = [(), (2, 3), (3, 4)]
    outs = [v.aval for v in eqn.outvars]
    forms = lookup(eqn.primitive)([g, x, None], 2, outs, shapes, params)
    inner = lookup(lax.dot_general_p)([x, None], 1, outs, shapes[1:], unwrap(eqn).params)
    assert [f.spec[:3] for f in forms] == [f.spec[:3] for f in inner]
    for f, i in zip(forms, inner):
        for (a, _), (b, _) in zip(f.factors, i.factors):
            np.testing.assert_array_equal(a, b if taken else np.zeros_like(b))
    values = apply_linear(eqn, [g, x, w])[0]
    np.testing.assert_array_equal(values, x @ w if taken else np.zeros((2, 4)))
    dense = dense_forms(eqn, [g, x, None], 2, eqn.invars[2].aval)[0].factors[0][0]
    want = np.einsum("ik,jl->ijkl", x, np.eye(4)) if taken else np.zeros((2, 4, 3, 4))
    np.testing.assert_allclose(dense, want)
    assert lookup(eqn.primitive)([g, x, w], 0, outs, shapes, params) is None  # g is no parameter

    ids = jnp.array([[2], [0]])  # a row lookup: a one-hot factor
    table = R.standard_normal((5, 3))
    rows = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,),
                                      start_index_map=(0,))
    eqn = _guarded_eqn(lambda t, i: lax.gather(t, i, rows, (1, 3), mode="promise_in_bounds"),
                       table, ids)
    operands = [g, None, ids]
    shapes = [tuple(v.aval.shape) for v in eqn.invars]
    forms = lookup(eqn.primitive)(operands, 1, [v.aval for v in eqn.outvars], shapes,
                                  dict(eqn.params))
    onehots = [(a, l) for f in forms for a, l in f.factors if isinstance(l, OneHot)]
    assert onehots
    for a, labels in onehots:
        np.testing.assert_array_equal(a, ids[:, 0] if taken else np.full(2, labels.size))
