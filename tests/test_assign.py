"""Per-leaf method choice (:mod:`ntkc.passes.assign`, ``method="auto"``, ``method=`` pytrees).

* ``LinearMap`` reads which equations each leaf's tangent reaches and which are its uses;
* ``CostModel.group_cost`` follows its formulas exactly on a hand-built cost model;
* ``assign`` keeps one method unless a mix is clearly cheaper, and finds the mix when it is;
* on an RNN with a wide dense head, auto mixes (jacobian for the recurrent weights, whose scan
  has no structured rule; structured for the head) and equals the float64 reference;
* a pytree of methods (a prefix of params) runs each leaf by its method, equal to the reference
  for every axes option, with ``by_param``; bad names and structures are refused clearly.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import no_rule
import ntkc
from ntkc import _auto, pipeline
import ntkc.rules
from ntkc._api import estimate_methods
from ntkc.passes import assign
from ntkc.passes.assign import CostModel, LinearMap, OutputShape
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)


def normal(shape, scale=1.0):
    return scale * R.standard_normal(shape)


# --------------------------------------------------------------------------------------------
# LinearMap


def test_linear_map_reach_and_uses_on_a_two_layer_net():
    """x -> x @ w -> tanh -> @ v: w's tangent flows through tanh' and the second dot; v's use
    (h @ dv) is reached by v alone; both meet in the final add."""
    params = [jnp.ones((3, 4)), jnp.ones((4, 5))]
    fn = lambda p, ins: [jnp.tanh(ins[0] @ p[0]) @ p[1]]
    analysis = pipeline.analyze(fn, params, [jnp.ones((3,))], None)
    lin = LinearMap.from_analysis(analysis)
    assert lin.uses.sum(1).tolist() == [1, 1]
    assert lin.flops[lin.uses[0]].tolist() == [2 * 3 * 4]  # x @ dw
    assert lin.flops[lin.uses[1]].tolist() == [2 * 4 * 5]  # h @ dv
    assert not lin.reach[0][lin.uses[1]].any() and not lin.reach[1][lin.uses[0]].any()
    assert (lin.reach[0] & lin.reach[1]).any()  # the add of the two paths
    assert 2 * 4 * 5 in lin.flops[lin.reach[0] & ~lin.uses[0]]  # dh @ v, downstream of w
    assert lin.reached([0, 1]) == lin.flops[lin.reach[0] | lin.reach[1]].sum()
    assert lin.reached([0]) > lin.reached([1]) and lin.used([0, 1]) == 24 + 40


def test_conv_uses_carry_the_weight_gradient_correction():
    params = [jnp.ones((3, 3, 2, 4))]
    dn = ("NHWC", "HWIO", "NHWC")
    fn = lambda p, ins: [lax.conv_general_dilated(ins[0], p[0], (1, 1), "SAME",
                                                  dimension_numbers=dn).sum()]
    analysis = pipeline.analyze(fn, params, [jnp.ones((1, 5, 5, 2))], None)
    lin = LinearMap.from_analysis(analysis)
    conv = int(np.flatnonzero(lin.uses[0])[0])
    assert lin.flops[conv] == 2 * 5 * 5 * 4 * 9 * 2
    factor = ntkc.rules.per_example_gradient_factor(jax.lax.conv_general_dilated_p)
    assert factor == 3.0 and lin.slow[conv] == (factor - 1) * lin.flops[conv]


# --------------------------------------------------------------------------------------------
# CostModel.group_cost: the formulas on a hand-built cost model


def hand_request(same_inputs=False, pairs_all=True):
    # two leaves, three equations: leaf 0 reaches e0, e1, e2 (uses e0); leaf 1 reaches e2 (uses e2)
    lin = LinearMap(flops=np.array([10.0, 20.0, 40.0]),
                    reach=np.array([[1, 1, 1], [0, 0, 1]], bool),
                    uses=np.array([[1, 0, 0], [0, 0, 1]], bool),
                    slow=np.array([5.0, 0.0, 0.0]))
    out = OutputShape(size1=6, size2=4, contraction=7, pairs_all=pairs_all)
    return CostModel((out,), examples1=3, examples2=2, forward1=100.0, forward2=200.0,
                     same_inputs=same_inputs, leaf_sizes=(11, 13), linear=lin, terms=(50.0, 60.0))


def test_group_costs_follow_the_formulas():
    req = hand_request()
    primal = 3 * 100 + 2 * 200
    r0, r1 = 70.0, 40.0  # reached FLOPs of leaf 0 and leaf 1 (one example of x1)
    # jacobian: a reverse pass per output entry per side (x2's scaled by 200/100) + 2·K·P
    assert req.group_cost("jacobian", [1]) == primal + 6 * r1 + 4 * 2 * r1 + 2 * 7 * 13
    slow = 5.0
    assert req.group_cost("jacobian", [0]) == (primal + 6 * (r0 + slow) + 4 * 2 * (r0 + slow)
                                              + 2 * 7 * 11)
    # ntvp: a VJP per entry of f(x2), a JVP per such entry and x1 example
    assert req.group_cost("ntvp", [0, 1]) == primal + 4 * 2 * r0 + 3 * 4 * r0
    # structured: cotangents without the uses' weight gradients, plus the terms
    assert req.group_cost("structured", [0]) == primal + 6 * 60 + 4 * 2 * 60 + 50
    assert req.group_cost("structured", [0, 1]) == primal + 6 * 20 + 4 * 2 * 20 + 110
    assert req.group_cost("ntvp", []) == 0.0
    assert req.cost(["structured", "ntvp"]) == (req.group_cost("structured", [0])
                                                + req.group_cost("ntvp", [1]))


def test_same_inputs_share_the_second_side_and_matched_pairs_visit_n_examples():
    req = hand_request(same_inputs=True, pairs_all=False)
    primal = 3 * 100
    assert req.group_cost("jacobian", [1]) == primal + 6 * 40 + 2 * 7 * 13
    # ntvp computes both sides even for x2 = x1; a traced example axis pairs example i with i
    assert req.group_cost("ntvp", [1]) == primal + 2 * 200 + 4 * 80 + 4 * 40


# --------------------------------------------------------------------------------------------
# assign


def synthetic(terms, reach_flops):
    """Leaves each reaching one private equation; the structured terms given per leaf."""
    n = len(terms)
    lin = LinearMap(np.asarray(reach_flops, float), np.eye(n, dtype=bool), np.eye(n, dtype=bool),
                    np.zeros(n))
    out = OutputShape(size1=10, size2=10, contraction=1, pairs_all=True)
    return CostModel((out,), 1, 1, 1.0, 1.0, True, (1,) * n, lin, tuple(terms))


def test_assign_mixes_when_one_leaf_is_expensive_for_structured_only():
    cheap = synthetic([1.0, 1e9], [1.0, 1.0])  # leaf 1's terms are huge, its passes cheap
    assert assign.assign(cheap) == ("structured", "jacobian")


def test_assign_keeps_one_method_when_mixing_saves_little():
    req = synthetic([1.0, 14.0], [1.0, 1.0])
    mixed = req.cost(["structured", "jacobian"])
    single = req.cost(["structured"] * 2)
    assert assign.MIXING_MARGIN * single < mixed < single  # mixing would save under 10%
    assert assign.assign(req) == ("structured", "structured")


def test_assign_keeps_structured_unless_another_is_clearly_cheaper():
    lin = LinearMap(np.array([1.0]), np.ones((1, 1), bool), np.zeros((1, 1), bool), np.zeros(1))
    out = OutputShape(1, 1, 1, True)

    def request(terms):  # ten x1 examples make ntvp the dearest
        return CostModel((out,), 10, 1, 0.0, 0.0, True, (1,), lin, terms)

    near = request((2.5,))
    assert near.group_cost("jacobian", [0]) < near.group_cost("structured", [0])
    assert assign.assign(near) == ("structured",)  # 3 is not below 0.8 x 3.5
    assert assign.assign(request((100.0,))) == ("jacobian",)
    assert assign.assign(request(None)) == ("jacobian",)


# --------------------------------------------------------------------------------------------
# end to end: an RNN with a wide head


def rnn_model(hdim=16, wide=256, steps=33, d=3, n=4):
    """The recurrent weight u enters a primitive with no structured rule (tests/no_rule.py):
    the dense rule, once per step, hoisted out of the loop (passes/rolled)."""
    params = {"u": normal((hdim, hdim), hdim**-0.5), "w_in": normal((d, hdim)),
              "head": {"w1": normal((hdim, wide), hdim**-0.5), "w2": normal((wide, 4), wide**-0.5)}}

    def f(p, x):  # x: (N, steps, d)
        def step(h, xt):
            return jnp.tanh(no_rule.matmul(h, p["u"]) + xt @ p["w_in"]), None

        h, _ = lax.scan(step, jnp.zeros((x.shape[0], hdim), x.dtype), jnp.swapaxes(x, 0, 1))
        return jnp.tanh(h @ p["head"]["w1"]) @ p["head"]["w2"]

    return f, params, normal((n, steps, d)), normal((n - 1, steps, d))


@pytest.mark.filterwarnings("ignore:ntkc. no structured rule")
def test_auto_mixes_methods_on_an_rnn_with_a_wide_head():
    f, params, x1, _ = rnn_model()
    plan = ntkc.plan(f, x1, None, params, vmap_axes=0, trace_axes=())
    assert plan.method == "mixed", plan
    assert plan.leaf_methods["['u']"] != "structured"  # its dense fallback
    assert plan.leaf_methods["['head']['w1']"] == "structured"  # the wide layer
    assert plan.method_costs["mixed"] < min(v for k, v in plan.method_costs.items() if k != "mixed")
    assert "mixed" in repr(plan) and "estimated FLOPs per method" in repr(plan)
    for row in plan.terms:
        assert row.method == plan.leaf_methods[row.leaf] or plan.leaf_methods[row.leaf] == "structured"


@pytest.mark.filterwarnings("ignore:ntkc. no structured rule")
@pytest.mark.parametrize("trace_axes,x2", [((), False), ((-1,), True)])
def test_auto_mixed_kernel_equals_the_reference(trace_axes, x2):
    f, params, x1, x2_data = rnn_model()
    x2 = x2_data if x2 else None
    kfn = ntkc.ntk_fn(f, trace_axes, vmap_axes=0)
    config, _ = kfn.prepare(x1, x2, params)
    assert config.method == "mixed"
    want = reference_ntk(f, x1, x2, params, trace_axes=trace_axes)
    np.testing.assert_allclose(kfn(x1, x2, params), want, rtol=1e-9, atol=1e-11)
    per_leaf = ntkc.ntk_fn(f, trace_axes, vmap_axes=0, by_param=True)(x1, x2, params)
    assert jax.tree.structure(per_leaf) == jax.tree.structure(params)
    np.testing.assert_allclose(sum(jax.tree.leaves(per_leaf)), want, rtol=1e-9, atol=1e-11)


def test_dense_fallback_is_charged_to_the_structured_estimate():
    """u's dense rule costs |operand| forward-mode passes per example: the larger the
    recurrent weight, the costlier structured is against jacobian."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = estimate_methods(*_args(rnn_model(hdim=8)), vmap_axes=0)
        large = estimate_methods(*_args(rnn_model(hdim=32)), vmap_axes=0)
    assert large["structured"] / large["jacobian"] > 4 * small["structured"] / small["jacobian"]


def _args(model):
    f, params, x1, _ = model
    return f, x1, None, params


def test_repeated_side_steps_are_free_when_x2_is_x1():
    """Each use of a token model's weights pairs with itself: with the outputs traced, each
    side's weight gradient is the cheaper order once x2's repeats x1's, and the estimate counts
    it once; with a distinct x2 nothing repeats."""
    f = lambda p, x: jnp.mean(jnp.tanh(x @ p["w"]) @ p["v"], axis=-2)
    params = {"w": normal((32, 16)), "v": normal((16, 4))}
    x = normal((2, 16, 32))
    plan = ntkc.plan(f, x, None, params, vmap_axes=0, trace_axes=(-1,))
    terms = [r for r in plan.records if r.kind == "term"]
    assert all(0 <= r.path.repeated_flops < r.path.cost.flops for r in terms)
    assert any(r.path.repeated_flops > 0 for r in terms)
    assert all(t.cost.flops == r.path.cost.flops - r.path.repeated_flops
               for t, r in zip(plan.terms, terms))
    cross = ntkc.plan(f, x, x + 1, params, vmap_axes=0, trace_axes=(-1,))
    assert all(r.path.repeated_flops == 0 for r in cross.records if r.kind == "term")
    req_same = _auto.cost_model(f, ntkc.ntk_fn(f, vmap_axes=0).prepare(x, None, params)[0],
                                params, x, x, {}, {}, ntkc.ir.Schedule(plan.records))
    full = tuple(sum(r.path.cost.flops for r in terms if r.param_leaf == i) for i in range(2))
    assert all(a <= b for a, b in zip(req_same.terms, full))
    assert sum(req_same.terms) < sum(full)


# --------------------------------------------------------------------------------------------
# method= as a pytree


def mlp_with_bias(p, x):
    return jnp.tanh(x @ p["enc"]["w"] + p["enc"]["b"][None, :]) @ p["head"]


MLP_PARAMS = {"enc": {"w": normal((3, 5)), "b": normal((5,))}, "head": normal((5, 2))}
CHOICES = ("structured", "jacobian", "ntvp")


MIXES = [m for m in itertools.product(CHOICES, repeat=3) if len(set(m)) > 1]  # 24 mixes
AXES = [((-1,), (), 0), ((), (), None), ((), (0,), 0), ((0,), (), 0)]


# ten of the 24 mixes, cycling through the axes options
@pytest.mark.parametrize("methods,axes", [(m, AXES[i % len(AXES)]) for i, m in enumerate(MIXES)
                                          if i % 3 == 0 or i < len(AXES)])
def test_per_leaf_methods_equal_the_reference(methods, axes):
    trace_axes, diagonal_axes, vmap_axes = axes
    b, w, head = methods  # leaves in flattening order: enc.b, enc.w, head
    method = {"enc": {"w": w, "b": b}, "head": head}
    x1, x2 = normal((4, 3)), normal((4, 3))
    kfn = ntkc.ntk_fn(mlp_with_bias, trace_axes, diagonal_axes, vmap_axes, method=method)
    assert kfn.prepare(x1, x2, MLP_PARAMS)[0].leaf_methods == methods
    want = reference_ntk(mlp_with_bias, x1, x2, MLP_PARAMS, trace_axes=trace_axes,
                         diagonal_axes=diagonal_axes)
    np.testing.assert_allclose(kfn(x1, x2, MLP_PARAMS), want, rtol=1e-10, atol=1e-12)


def test_a_method_prefix_covers_a_subtree_and_by_param_keeps_its_layout():
    method = {"enc": "ntvp", "head": "structured"}
    x1 = normal((3, 3))
    kfn = ntkc.ntk_fn(mlp_with_bias, (), vmap_axes=0, method=method, by_param=True)
    assert kfn.prepare(x1, None, MLP_PARAMS)[0].leaf_methods == ("ntvp", "ntvp", "structured")
    got = kfn(x1, None, MLP_PARAMS)
    want = ntkc.ntk_fn(mlp_with_bias, (), vmap_axes=0, method="jacobian", by_param=True)(
        x1, None, MLP_PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, want)
    plan = ntkc.plan(mlp_with_bias, x1, None, MLP_PARAMS, vmap_axes=0, method=method)
    assert plan.method == "mixed"
    assert {t.leaf: t.method for t in plan.terms}["['enc']['w']"] == "ntvp"


def test_one_method_for_every_leaf_is_not_a_mix():
    kfn = ntkc.ntk_fn(mlp_with_bias, method={"enc": "jacobian", "head": "jacobian"})
    config, _ = kfn.prepare(normal((2, 3)), None, MLP_PARAMS)
    assert config.method == "jacobian" and config.leaf_methods is None


@pytest.mark.parametrize("method,match", [
    ({"enc": "fast", "head": "ntvp"}, "per-leaf method must be one of"),
    ({"enc": "auto", "head": "ntvp"}, "per-leaf method must be one of"),
    ({}, "needs at least one leaf"),
])
def test_bad_method_pytrees_are_refused_at_once(method, match):
    with pytest.raises(ValueError, match=match):
        ntkc.ntk_fn(mlp_with_bias, method=method)


def test_a_method_pytree_must_match_params():
    kfn = ntkc.ntk_fn(mlp_with_bias, method={"encoder": "ntvp", "head": "structured"})
    with pytest.raises(ValueError, match="prefix of the structure of params"):
        kfn(normal((2, 3)), None, MLP_PARAMS)
