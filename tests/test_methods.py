"""The method registry (:mod:`ntkc.methods.registry`), table by table:

* every registered method computes the float64 reference kernel (the per-leaf mix through a
  pytree of methods), and ``ntkc.plan`` names it; with Gram side and pair functions, so does
  ``ntkc.gram``; every per-leaf method's estimates are compared by ``auto``;
* ``ntkc.METHODS`` and a bad name's error list exactly the registry's names;
* neural-tangents' ``implementation=0..3`` map onto registered methods;
* a method registered by a test (and removed after) is usable by name, alone and per leaf.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc._api import estimate_methods
from ntkc.methods import jacobian, registry
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)


def f(p, x):
    return jnp.tanh(x @ p["w"] + p["b"][None, :]) @ p["v"]


PARAMS = {"w": R.standard_normal((3, 5)), "b": R.standard_normal(5), "v": R.standard_normal((5, 2))}
X1, X2 = R.standard_normal((4, 3)), R.standard_normal((3, 3))
AXES = [dict(trace_axes=(-1,), vmap_axes=0), dict(trace_axes=(), vmap_axes=None)]


def method_argument(method: registry.Method):
    """What ``method=`` takes to run ``method``: its name, or for the per-leaf mix a pytree
    giving each leaf a different per-leaf method."""
    if method.per_leaf:
        return method.name
    names = registry.per_leaf_names()
    return {leaf: names[i % len(names)] for i, leaf in enumerate(sorted(PARAMS))}


@pytest.mark.parametrize("name", list(registry.METHODS))
@pytest.mark.parametrize("axes", AXES, ids=["traced-vmap", "untraced"])
def test_every_registered_method_computes_the_reference(name, axes):
    method = registry.METHODS[name]
    kernel_fn = ntkc.ntk_fn(f, method=method_argument(method), **axes)
    want = reference_ntk(f, X1, X2, PARAMS, trace_axes=axes["trace_axes"])
    np.testing.assert_allclose(kernel_fn(X1, X2, PARAMS), want, rtol=1e-10, atol=1e-12)
    assert ntkc.plan(f, X1, X2, PARAMS, method=method_argument(method), **axes).method == name


@pytest.mark.parametrize("name", [n for n, m in registry.METHODS.items() if m.gram is not None])
def test_every_method_with_gram_sides_computes_the_gram_matrix(name):
    got = ntkc.gram(f, PARAMS, X1, X2, batch_size=2, progress=False, method=name)
    np.testing.assert_allclose(got, reference_ntk(f, X1, X2, PARAMS), rtol=1e-10, atol=1e-12)


def test_auto_compares_every_per_leaf_method():
    costs = estimate_methods(f, X1, X2, PARAMS, vmap_axes=0)
    assert set(registry.per_leaf_names()) <= set(costs)
    assert all(c > 0 for c in costs.values())


def test_the_names_method_accepts_are_the_registry_s():
    assert ntkc.METHODS == (registry.AUTO,) + tuple(
        name for name, m in registry.METHODS.items() if m.per_leaf)


@pytest.mark.quick
@pytest.mark.parametrize("bad", ["fast", "mixed", "Structured"])
def test_a_bad_name_s_error_lists_exactly_the_registry_s_names(bad):
    with pytest.raises(ValueError, match=f"method={bad!r} is not one of") as info:
        ntkc.ntk_fn(f, method=bad)
    listed = re.findall(r"'(\w+)'", str(info.value).split("is not one of", 1)[1])
    assert tuple(listed) == ntkc.METHODS


def test_a_bad_per_leaf_name_s_error_lists_the_per_leaf_methods():
    with pytest.raises(ValueError, match="per-leaf method must be one of") as info:
        ntkc.ntk_fn(f, method={"w": "auto", "b": "ntvp", "v": "ntvp"})
    listed = re.findall(r"'(\w+)'", str(info.value).split("one of", 1)[1].split(", got")[0])
    assert tuple(listed) == registry.per_leaf_names()


@pytest.mark.parametrize("implementation", list(ntkc.NtkImplementation))
def test_neural_tangents_implementations_are_registered_names(implementation):
    kernel_fn = ntkc.empirical_ntk_fn(f, vmap_axes=0, implementation=int(implementation))
    assert kernel_fn.method in ntkc.METHODS
    want = reference_ntk(f, X1, X2, PARAMS)
    np.testing.assert_allclose(kernel_fn(X1, X2, PARAMS), want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# a method of one's own: one module (here, a function) and one registration


def forward_mode_kernel(prob) -> list:
    """Jacobian contraction with whole-batch Jacobians by forward mode (no per-example vmap)."""
    jac1 = jax.jacfwd(prob.full_fn(1))(prob.params)
    jac2 = jac1 if prob.same_inputs else jax.jacfwd(prob.full_fn(2))(prob.params)
    return [jacobian.contract_jacobians(a, b, axes, prob.config.by_param)
            for a, b, axes in zip(jac1, jac2, prob.axes)]


def forward_mode_method() -> registry.Method:
    # ten times jacobian's FLOPs: auto never prefers it
    return registry.Method("forward", forward_mode_kernel,
                           flops=lambda cost_model, leaves: 10 * jacobian.flops(cost_model, leaves),
                           working_set=jacobian.working_set)


@pytest.mark.quick
def test_a_registered_method_is_usable_by_name_until_removed():
    registry.register(forward_mode_method())
    try:
        assert ntkc.METHODS[-1] == "forward"
        want = reference_ntk(f, X1, X2, PARAMS, trace_axes=())
        alone = ntkc.ntk_fn(f, (), vmap_axes=0, method="forward")
        np.testing.assert_allclose(alone(X1, X2, PARAMS), want, rtol=1e-10, atol=1e-12)
        per_leaf = ntkc.ntk_fn(f, (), vmap_axes=0, method={"w": "forward", "b": "structured",
                                                            "v": "ntvp"})
        np.testing.assert_allclose(per_leaf(X1, X2, PARAMS), want, rtol=1e-10, atol=1e-12)
        plan = ntkc.plan(f, X1, X2, PARAMS, vmap_axes=0, method="forward")
        assert plan.method == "forward" and "forward" in plan.method_costs
        # ntkc.gram has no side/pair functions for it: the kernel function per tile
        got = ntkc.gram(f, PARAMS, X1, X2, batch_size=2, progress=False, trace_axes=(),
                        method="forward")
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        with pytest.raises(ValueError, match="'forward'"):  # the error lists it
            ntkc.ntk_fn(f, method="backward")
    finally:
        del registry.METHODS["forward"]
    assert "forward" not in ntkc.METHODS
    with pytest.raises(ValueError, match="method='forward' is not one of"):
        ntkc.ntk_fn(f, method="forward")


def test_registration_refuses_a_taken_name_and_missing_estimates():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Method("jacobian", forward_mode_kernel, jacobian.flops,
                                          jacobian.working_set))
    with pytest.raises(ValueError, match="'auto' names the planner's choice"):
        registry.register(registry.Method("auto", forward_mode_kernel, jacobian.flops,
                                          jacobian.working_set))
    with pytest.raises(ValueError, match="needs its flops and working_set"):
        registry.register(registry.Method("forward", forward_mode_kernel))
    assert "forward" not in registry.METHODS
