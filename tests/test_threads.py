"""Kernel functions of different models traced at the same time from two threads: what a trace
records (ntkc.plan, method="auto") belongs to that trace alone."""

import threading
from concurrent.futures import ThreadPoolExecutor

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc

NHWC = ("NHWC", "HWIO", "NHWC")


def normal(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def mlp(p, x):
    return jnp.tanh(x @ p["w"] + p["b"][None, :]) @ p["v"]


def conv_net(p, x):
    h = jnp.tanh(lax.conv_general_dilated(x, p["c"], (1, 1), "SAME", dimension_numbers=NHWC))
    return h.mean((1, 2)) @ p["d"]


CASES = {  # name: (f, params, x1, x2, method of the kernel function)
    "mlp": (mlp, {"w": normal(0, (5, 16), 0.4), "b": normal(1, (16,)), "v": normal(2, (16, 3))},
            normal(3, (4, 5)), normal(4, (3, 5)), "auto"),
    "conv": (conv_net, {"c": normal(5, (3, 3, 2, 4), 0.3), "d": normal(6, (4, 2))},
             normal(7, (3, 6, 6, 2)), None, "structured"),
}


def plan_and_kernel(name):
    """The case's plan, and its kernel from a new kernel function (so that it is traced)."""
    f, params, x1, x2, method = CASES[name]
    plan = ntkc.plan(f, x1, x2, params, vmap_axes=0)
    kernel = ntkc.ntk_fn(f, vmap_axes=0, method=method)(x1, x2, params)
    return plan, np.asarray(kernel)


@pytest.mark.quick
def test_two_kernel_functions_traced_in_two_threads():
    alone = {name: plan_and_kernel(name)[0] for name in CASES}
    references = {name: ntkc.testing.reference_ntk(f, x1, x2, params)
                  for name, (f, params, x1, x2, _) in CASES.items()}
    start = threading.Barrier(len(CASES))

    def together(name):
        start.wait()  # both threads trace at the same time
        return plan_and_kernel(name)

    with ThreadPoolExecutor(len(CASES)) as pool:
        for _ in range(3):
            results = dict(zip(CASES, pool.map(together, CASES)))
            for name, (plan, kernel) in results.items():
                assert plan.terms == alone[name].terms
                assert repr(plan) == repr(alone[name])
                assert ([r.kind for r in plan.records]
                        == [r.kind for r in alone[name].records])
                np.testing.assert_allclose(kernel, references[name], rtol=1e-7, atol=1e-9)
