"""ntkc.plan: the planner's choices on constructed cases, the Plan's table, graph and DOT text,
memory_limit, and method="auto"."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc

NHWC = ("NHWC", "HWIO", "NHWC")


def normal(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def dense(p, x):
    return jnp.tanh(x @ p["w"] + p["b"][None, :]) @ p["v"]


def wide_dense():
    params = {"w": normal(0, (64, 1024), 0.1), "b": normal(1, (1024,)), "v": normal(2, (1024, 10), 0.03)}
    return dense, params, normal(3, (4, 64)), None


def conv_net(p, x):
    h = lax.conv_general_dilated(x, p["c"], (1, 1), "SAME", dimension_numbers=NHWC)
    return h.mean((1, 2)) @ p["d"]


def term(plan, leaf):
    (t,) = [t for t in plan.terms if t.leaf == leaf]
    return t


def test_wide_dense_layer_is_contracted_structurally():
    """x1 x2ᵀ and c1 c2ᵀ meet before the width is summed: no per-leaf Jacobian is formed."""
    f, params, x1, x2 = wide_dense()
    plan = ntkc.plan(f, x1, x2, params, trace_axes=(), vmap_axes=0)
    for leaf in ("['w']", "['v']"):
        t = term(plan, leaf)
        assert t.method == "structured", plan
        assert t.primitives == ("dot_general", "dot_general")
        assert t.cost.flops < t.naive.flops / 20
    assert term(plan, "['b']").primitives == ("broadcast_in_dim", "broadcast_in_dim")


def test_conv_with_few_channels_on_a_large_image_takes_the_jacobian_order():
    """pixels² dominates filter x channels: each side is contracted to its gradient first."""
    params = {"c": normal(0, (3, 3, 2, 2)), "d": normal(1, (2, 3))}
    plan = ntkc.plan(conv_net, normal(2, (2, 32, 32, 2)), None, params, vmap_axes=0)
    assert term(plan, "['c']").method == "jacobian", plan


def test_conv_with_many_channels_on_a_small_image_is_structured():
    params = {"c": normal(0, (3, 3, 64, 64), 0.05), "d": normal(1, (64, 3))}
    plan = ntkc.plan(conv_net, normal(2, (2, 4, 4, 64)), None, params, vmap_axes=0)
    assert term(plan, "['c']").method == "structured", plan


def test_embedding_is_a_token_equality_not_a_one_hot():
    def f(p, ids):
        return jnp.tanh(p["E"][ids].mean(1)) @ p["W"]

    params = {"E": normal(0, (1000, 8)), "W": normal(1, (8, 3))}
    ids = jnp.array([[1, 5, 7], [2, 2, 999]])
    plan = ntkc.plan(f, ids, None, params, vmap_axes=0)
    t = term(plan, "['E']")
    assert t.primitives == ("gather", "gather")
    assert "token equality" in t.structure[0]
    sizes = [r.sizes for r in plan.records if r.kind == "term" and r.param_leaf == 0]
    assert all(1000 not in s.values() for s in sizes), "a vocabulary-sized axis was built"


def test_plan_table_graph_and_dot():
    f, params, x1, x2 = wide_dense()
    plan = ntkc.plan(f, x1, x2, params, vmap_axes=0)
    text = repr(plan)
    assert text.startswith("Plan: method=")
    for leaf in ("['w']", "['b']", "['v']"):
        assert leaf in text
    assert "naive order" in text and "FLOPs" in text
    g = plan.graph
    kinds = {d["kind"] for _, d in g.nodes(data=True)}
    assert kinds == {"parameter", "use", "factor", "cotangent", "contraction", "kernel"}
    assert all(g.in_degree(n) == 0 for n, d in g.nodes(data=True) if d["kind"] == "parameter")
    dot = plan.to_dot()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert dot.count('" -> "') == g.number_of_edges()
    assert plan.cost.flops == pytest.approx(
        plan.cotangents.flops + sum(t.cost.flops for t in plan.terms))


def test_plan_records_the_method_auto_resolves_to():
    f, params, x1, x2 = wide_dense()
    assert ntkc.plan(f, x1, x2, params, vmap_axes=0, method="ntvp").method == "ntvp"
    auto = ntkc.plan(f, x1, x2, params, vmap_axes=0).method
    assert auto == "structured"


def test_memory_limit_changes_the_order_or_raises():
    f, params, x1, _ = wide_dense()
    x1 = normal(4, (8, 64))
    free = ntkc.plan(f, x1, None, params, trace_axes=(), vmap_axes=0)
    peak = max(t.cost.peak for t in free.terms)
    with pytest.raises(ntkc.PathMemoryError, match="memory_limit"):
        ntkc.plan(f, x1, None, params, trace_axes=(), vmap_axes=0, memory_limit=64)
    limited = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured", memory_limit=int(peak))
    unlimited = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured")
    np.testing.assert_allclose(np.asarray(limited(x1, None, params)),
                               np.asarray(unlimited(x1, None, params)), rtol=1e-10)


def test_bad_memory_limit_is_named():
    with pytest.raises(ValueError, match="memory_limit"):
        ntkc.ntk_fn(dense, memory_limit=-1)
