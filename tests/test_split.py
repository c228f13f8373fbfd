"""Batch splits under ``memory_limit``: when no method fits the whole batch, the kernel is
computed in blocks of examples that fit and assembled; auto prefers a method that fits whole.

Blocks equal the float64 reference for free, traced and diagonal example axes, x2 given or not,
every method, pytree outputs with ``by_param``, and batched keyword arguments; the block chosen
fits and the whole batch does not; what cannot be split is refused with a clear error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 32)), "v": R.standard_normal((32, 4))}
X1, X2 = R.standard_normal((9, 3)), R.standard_normal((7, 3))
LIMIT = 40_000  # bytes: a few examples' per-example Jacobians, not nine


def f(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def peak(kfn, x1, x2):
    """The planner's working-set estimate of the method the kernel function resolved to."""
    config, args = kfn.prepare(x1, x2, PARAMS)
    req = kfn._cost_model(config, args)
    return req.peak(config.leaf_methods or (config.method,) * len(req.leaf_sizes))


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntvp"])
@pytest.mark.parametrize("trace_axes,diagonal_axes,same", [
    ((), (), True), ((-1,), (), False), ((0,), (), True), ((), (0,), False)])
def test_blocks_equal_the_reference(method, trace_axes, diagonal_axes, same):
    x2 = None if same else (X2 if 0 not in trace_axes + diagonal_axes else X1 + 0.5)
    kfn = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=0, method=method,
                      memory_limit=LIMIT)
    config, _ = kfn.prepare(X1, x2, PARAMS)
    if method in ("jacobian", "ntvp"):  # their Jacobians / VJPs never fit the whole batch
        assert config.method == "blocks" and 1 <= config.block < 9, config
    want = reference_ntk(f, X1, x2, PARAMS, trace_axes=trace_axes, diagonal_axes=diagonal_axes)
    np.testing.assert_allclose(kfn(X1, x2, PARAMS), want, rtol=1e-10, atol=1e-12)


def test_the_block_fits_and_the_whole_batch_does_not():
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method="jacobian", memory_limit=LIMIT)
    block = kfn.prepare(X1, X2, PARAMS)[0].block
    free = ntkc.ntk_fn(f, (), vmap_axes=0, method="jacobian")
    assert peak(free, X1, X2) > LIMIT
    assert peak(free, X1[:block], X2[:block]) <= LIMIT
    assert peak(free, X1[:2 * block], X2[:2 * block]) > LIMIT  # the largest halving that fits
    plan = ntkc.plan(f, X1, X2, PARAMS, trace_axes=(), vmap_axes=0, method="jacobian",
                     memory_limit=LIMIT)
    assert plan.method == "jacobian" and str(plan.split) == f"in blocks of {block} examples"


def test_pytree_outputs_by_param_and_batched_kwargs():
    def g(p, x, scale):
        h = f(p, x) * scale[:, None]
        return {"a": h, "b": jnp.sin(h)}

    scale = R.standard_normal(9)
    vmap_axes = (0, 0, {"scale": 0})
    kfn = ntkc.ntk_fn(g, (), vmap_axes=vmap_axes, method="structured", memory_limit=LIMIT,
                      by_param=True)
    assert kfn.prepare(X1, None, PARAMS, scale=scale)[0].block
    got = kfn(X1, None, PARAMS, scale=scale)
    want = ntkc.ntk_fn(g, (), vmap_axes=vmap_axes, method="jacobian", by_param=True)(
        X1, None, PARAMS, scale=scale)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, want)


def test_auto_prefers_a_method_that_fits_the_whole_batch():
    """A wide layer: the per-example Jacobians do not fit, the structured operands do."""
    params = {"w": R.standard_normal((8, 512)) / 3, "v": R.standard_normal((512, 10)) / 20}
    x = R.standard_normal((6, 8))
    g = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    jac = ntkc.ntk_fn(g, (), vmap_axes=0, method="jacobian", memory_limit=2**21)
    assert jac.prepare(x, None, params)[0].method == "blocks"
    auto = ntkc.ntk_fn(g, (), vmap_axes=0, memory_limit=2**21)
    config, _ = auto.prepare(x, None, params)
    assert config.method == "structured" and config.block is None


def test_what_cannot_be_split_is_refused_clearly():
    with pytest.raises(ntkc.PathMemoryError, match="without vmap_axes.*nor for one output"):
        ntkc.ntk_fn(f, method="jacobian", memory_limit=LIMIT // 8)(X1, None, PARAMS)
    # without vmap_axes the examples cannot be split, but the outputs can (tests/test_output_split)
    kfn = ntkc.ntk_fn(f, method="jacobian", memory_limit=4 * LIMIT)
    assert kfn.prepare(X1, None, PARAMS)[0].chunk is not None
    np.testing.assert_allclose(kfn(X1, None, PARAMS), reference_ntk(f, X1, None, PARAMS),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ntkc.PathMemoryError, match="not even for one example"):
        ntkc.ntk_fn(f, vmap_axes=0, memory_limit=100)(X1, None, PARAMS)

    def noisy(p, x, rng):
        return f(p, x) + jax.random.normal(rng, (x.shape[0], 4))

    with pytest.raises(ntkc.PathMemoryError, match="rng"):
        ntkc.ntk_fn(noisy, vmap_axes=(0, 0, {"rng": None}), method="jacobian",
                    memory_limit=LIMIT)(X1, X2, PARAMS, rng=jax.random.PRNGKey(0))


@pytest.mark.parametrize("method", ["jacobian", "ntvp"])
@pytest.mark.parametrize("same", [True, False])
def test_compile_a_split_into_blocks(method, same):
    """ntkc.compile holds a split into blocks in one program: the kernel function's result."""
    x2 = None if same else X2
    options = dict(vmap_axes=0, method=method, memory_limit=LIMIT)
    abstract = lambda x: None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype)
    compiled = ntkc.compile(f, abstract(X1), abstract(x2), PARAMS, **options)
    assert compiled.plan.split is not None and compiled.plan.split.examples
    assert compiled.method == compiled.plan.method != "blocks"
    got = compiled(X1, x2, PARAMS)
    np.testing.assert_allclose(got, ntkc.ntk_fn(f, **options)(X1, x2, PARAMS),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, reference_ntk(f, X1, x2, PARAMS), rtol=1e-10, atol=1e-12)
