"""A dense fallback's working set is estimated like every other step (issue 14, item 4): the
estimate follows XLA's own memory analysis, memory_limit refuses it or splits around it, and
without memory_limit a program that cannot fit the device is refused before XLA is asked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from ntkc.passes.unroll import MAX_LENGTH

R = np.random.default_rng(0)


LONG = MAX_LENGTH + 1  # longer than the loops the structured method unrolls: the dense rule


def scanned_stack(depth, width, inputs=16, outputs=10):
    """A residual tanh stack run by lax.scan over stacked weights (a loop of more than
    MAX_LENGTH iterations stays rolled: its weights take the dense fallback)."""
    params = {"w_in": R.standard_normal((inputs, width)).astype(np.float32) / 4,
              "w": R.standard_normal((depth, width, width)).astype(np.float32) / width ** 0.5,
              "v": R.standard_normal((width, outputs)).astype(np.float32)}

    def f(p, x):
        h = x @ p["w_in"]
        h, _ = lax.scan(lambda h, w: (h + jnp.tanh(h @ w), None), h, p["w"])
        return h @ p["v"]

    return f, params


def structured_estimate(f, params, x):
    """(the planner's working-set estimate of the structured program, its kernel function,
    config and arguments)."""
    kfn = ntkc.ntk_fn(f, vmap_axes=0, method="structured")
    config, args = kfn.prepare(x, None, params)
    return kfn._cost_model(config, args).peak(("structured",) * 3), kfn, config, args


def test_the_dense_fallbacks_estimate_follows_xlas_memory_analysis():
    f, params = scanned_stack(depth=LONG, width=8)
    x = R.standard_normal((8, 16)).astype(np.float32)
    estimate, kfn, config, args = structured_estimate(f, params, x)
    compiled = kfn._jit(config, args).lower(*args, config=config).compile()
    xla = compiled.memory_analysis().temp_size_in_bytes
    assert 0.5 < estimate / xla < 2.0, (estimate, xla)


def test_a_program_that_cannot_fit_the_device_is_refused_before_xla():
    # 784 -> 33 x 512 scanned tanh stack -> 10, N=32: the dense rule of the scan would ask XLA
    # for far more than any machine has (forward mode carries one tangent per entry of 8.7M
    # weights); short stacks (<= 32 layers) are unrolled and get structured rules instead
    f, params = scanned_stack(depth=LONG, width=512, inputs=784)
    x = R.standard_normal((32, 784)).astype(np.float32)
    with pytest.raises(ntkc.PathMemoryError, match=r"method='structured' needs about [0-9.e+]+ "
                                                    r"GiB.*more than the .* GiB.*'dense' rows"):
        ntkc.ntk_fn(f, vmap_axes=0, method="structured")(x, None, params)
    with pytest.raises(ntkc.PathMemoryError, match="memory_limit=8589934592"):
        ntkc.ntk_fn(f, vmap_axes=0, method="structured", memory_limit=8 * 2**30)(x, None, params)


def test_memory_limit_steers_auto_away_from_the_dense_fallback():
    f, params = scanned_stack(depth=LONG, width=8)
    x = R.standard_normal((8, 16)).astype(np.float32)
    structured = structured_estimate(f, params, x)[0]
    kfn = ntkc.ntk_fn(f, vmap_axes=0, memory_limit=int(structured / 2))
    config, _ = kfn.prepare(x, None, params)
    assert config.method != "structured" and "structured" not in (config.leaf_methods or ())
    want = ntkc.testing.reference_ntk(f, x, None, params)
    np.testing.assert_allclose(kfn(x, None, params), want, rtol=2e-4, atol=2e-4)


def test_the_plan_lists_every_dense_fallback_with_its_cost():
    f, params = scanned_stack(depth=LONG, width=4)
    x1, x2 = (R.standard_normal((n, 16)).astype(np.float32) for n in (4, 3))
    plan = ntkc.plan(f, x1, x2, params, vmap_axes=0, method="structured")
    assert [(fb.primitive, fb.leaf, fb.side) for fb in plan.fallbacks] == [
        ("scan", "['w']", 1), ("scan", "['w']", 2)]
    one, two = plan.fallbacks
    assert "test_dense_fallback_memory.py" in one.where
    # forward mode over the 33 x 16 weights of the stack, for 4 and 3 examples
    size = LONG * 16
    assert one.flops / two.flops == pytest.approx(4 / 3) and one.bytes > two.bytes > size ** 2 * 4
    assert "dense fallback: scan at" in repr(plan) and "param ['w'], x2" in repr(plan)
    symmetric = ntkc.plan(f, x1, None, params, vmap_axes=0, method="structured")
    assert len(symmetric.fallbacks) == 1  # x2 = x1: one dense rule serves both sides
