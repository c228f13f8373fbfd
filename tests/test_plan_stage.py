"""The plan is a stage of its own (issue 12, items 1 and 2).

* planning is an abstract evaluation: ``ntkc.plan`` and a kernel function's preparation compile
  nothing (JAX's compile events are counted);
* ``f`` is traced once per input signature for the structured analysis, whether ``auto``,
  ``ntkc.plan`` or the call asks first; a second call traces nothing;
* the call executes the schedule it planned: no contraction order is chosen inside ``jit``;
* ``Plan.kernel`` runs what ``ntkc.plan`` returned and equals the float64 reference; it refuses
  arguments of another signature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc import pipeline
from ntkc.passes import network
from ntkc.testing import reference_ntk

jax.config.update("jax_enable_x64", True)


def normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, dtype=jnp.float64)


PARAMS = {"w": normal(0, (6, 32), 0.4), "v": normal(1, (32, 3), 0.2)}


class Counter:
    """Counts calls of f (its traces) and of the structured analysis."""

    def __init__(self, monkeypatch):
        self.f_calls = 0
        self.analyses = 0
        analyze = pipeline.analyze

        def counted(*args, **kwargs):
            self.analyses += 1
            return analyze(*args, **kwargs)

        monkeypatch.setattr(pipeline, "analyze", counted)

    def f(self, p, x):
        self.f_calls += 1
        return jnp.tanh(x @ p["w"]) @ p["v"]


@pytest.mark.parametrize("method", ["structured", "auto"])
@pytest.mark.parametrize("cross", [False, True])
def test_f_is_analysed_once_per_signature(monkeypatch, method, cross):
    count = Counter(monkeypatch)
    x1, x2 = normal(2, (4, 6)), (normal(3, (5, 6)) if cross else None)
    kfn = ntkc.ntk_fn(count.f, vmap_axes=0, method=method)
    got = kfn(x1, x2, PARAMS)
    assert kfn.prepare(x1, x2, PARAMS)[0].method == "structured"
    # one analysis: x2's examples have x1's shapes, so its side reuses it
    assert count.analyses == 1
    # f's traces: the argument checks (output shapes on x1 and x2, one example's) and the
    # analysis' linearization
    assert count.f_calls == (4 if cross else 3)
    np.testing.assert_allclose(got, reference_ntk(count.f, x1, x2, PARAMS), rtol=1e-10)
    before = count.f_calls, count.analyses
    np.testing.assert_allclose(kfn(x1, x2, PARAMS), got, rtol=0)
    assert (count.f_calls, count.analyses) == before  # the second call traces nothing


def test_plan_then_call_analyses_once_and_runs_the_plan(monkeypatch):
    count = Counter(monkeypatch)
    x1, x2 = normal(2, (4, 6)), normal(3, (5, 6))
    plan = ntkc.plan(count.f, x1, x2, PARAMS, vmap_axes=0, method="structured")
    assert count.analyses == 1

    chosen = []
    optimize = network.optimize
    monkeypatch.setattr(network, "optimize", lambda *a, **k: chosen.append(1) or optimize(*a, **k))
    got = plan.kernel(x1, x2, PARAMS)
    assert count.analyses == 1, "executing the plan traced f's analysis again"
    assert not chosen, "the executed program chose contraction orders its plan had not given"
    np.testing.assert_allclose(got, reference_ntk(count.f, x1, x2, PARAMS), rtol=1e-10)


@pytest.mark.parametrize("method", ["structured", "auto", "jacobian"])
def test_plan_kernel_equals_the_kernel_function(method):
    f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    x1, x2 = normal(2, (4, 6)), normal(3, (5, 6))
    options = dict(trace_axes=(), vmap_axes=0, method=method)
    plan = ntkc.plan(f, x1, x2, PARAMS, **options)
    expected = reference_ntk(f, x1, x2, PARAMS, trace_axes=())
    np.testing.assert_allclose(plan.kernel(x1, x2, PARAMS), expected, rtol=1e-10)
    np.testing.assert_allclose(ntkc.ntk_fn(f, **options)(x1, x2, PARAMS), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="Plan.kernel: the arguments' shapes"):
        plan.kernel(x1[:3], x2, PARAMS)


def test_a_split_plan_runs_its_split():
    """Under memory_limit the plan is of one block; Plan.kernel runs every block."""
    f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    x1 = normal(2, (8, 6))
    kfn = ntkc.ntk_fn(f, vmap_axes=0, method="structured")
    whole = kfn(x1, None, PARAMS)
    for limit in (2**k for k in range(8, 30)):  # the smallest limit that allows a split
        try:
            plan = ntkc.plan(f, x1, None, PARAMS, vmap_axes=0, method="structured",
                             memory_limit=limit)
        except ntkc.PathMemoryError:
            continue
        break
    assert plan.split is not None and plan.split.examples < 8
    np.testing.assert_allclose(plan.kernel(x1, None, PARAMS), whole, rtol=1e-10)


def test_planning_compiles_nothing():
    compiled = []

    def listener(event, duration, **kwargs):
        if "backend_compile" in event:
            compiled.append(event)

    f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    x1 = jax.block_until_ready(normal(2, (4, 6)))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        ntkc.plan(f, x1, None, PARAMS, vmap_axes=0)
        kfn = ntkc.ntk_fn(f, vmap_axes=0)
        kfn.prepare(x1, None, PARAMS)
        assert compiled == []
        kfn(x1, None, PARAMS)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled, "the listener saw no compilation at all: it does not observe compiles"
