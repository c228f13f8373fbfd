"""Streaming over outputs under memory_limit: when not even one example fits, the kernel is
computed in chunks of outputs (alone, or with example blocks inside each chunk), and equals the
unsplit kernel for traced, untraced and diagonal output axes, in every method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from grids import all_pairs
from ntkc import _split
from ntkc.testing import reference_ntk

R = np.random.default_rng(0)
P = {"w": R.standard_normal((4, 32)) / 2, "v": R.standard_normal((32, 12)) / 5}
X1, X2 = R.standard_normal((6, 4)), R.standard_normal((5, 4))


def f(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]  # (N, 12): 12 outputs to split


# memory limits (bytes) under which the whole batch, and one example, do not fit
LIMIT = {"structured": 8192, "jacobian": 16384, "ntvp": 16384, "auto": 8192}
AXES = [((), ()), ((-1,), ()), ((), (-1,))]


def _splits(kfn, x1, x2):
    """(the outer config, the config of one chunk's kernel)."""
    return _splits_of(kfn, x1, x2, P)


def _splits_of(kfn, x1, x2, params):
    config, _ = kfn.prepare(x1, x2, params)
    inner = kfn._chunk_fn(*config.chunk).prepare(
        (x1, _split.output_start(0)), (x1 if x2 is None else x2, _split.output_start(0)),
        params)[0]
    return config, inner


@pytest.mark.parametrize("method, axes, symmetric", all_pairs(sorted(LIMIT), AXES, [True, False]))
def test_output_chunks_with_example_blocks_equal_the_kernel(method, axes, symmetric):
    trace_axes, diagonal_axes = axes
    x2 = None if symmetric else X2
    kfn = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=0, method=method,
                      memory_limit=LIMIT[method])
    config, inner = _splits(kfn, X1, x2)
    assert config.chunk is not None and config.chunk[0] == 1 and config.chunk[1] < 12
    assert inner.block is not None  # each chunk's kernel is split into example blocks too
    want = reference_ntk(f, X1, x2, P, trace_axes, diagonal_axes)
    np.testing.assert_allclose(kfn(X1, x2, P), want, rtol=1e-10, atol=1e-12)


@pytest.mark.quick
@pytest.mark.parametrize("method, limit", [("structured", 131072), ("jacobian", 131072),
                                           ("ntvp", 65536), ("auto", 65536)])
def test_output_chunks_alone_without_vmap_axes(method, limit):
    kfn = ntkc.ntk_fn(f, (), vmap_axes=None, method=method, memory_limit=limit)
    config, _ = kfn.prepare(X1, X2, P)
    assert config.block is None and config.chunk is not None
    np.testing.assert_allclose(kfn(X1, X2, P), reference_ntk(f, X1, X2, P, ()),
                               rtol=1e-10, atol=1e-12)


def test_a_traced_batch_axis_and_an_output_split_together():
    kfn = ntkc.ntk_fn(f, (0,), vmap_axes=0, method="structured", memory_limit=8192)
    assert kfn.prepare(X1, None, P)[0].chunk is not None
    np.testing.assert_allclose(kfn(X1, None, P), reference_ntk(f, X1, None, P, (0,)),
                               rtol=1e-10, atol=1e-12)


def test_pytree_output_by_param_and_kwargs_with_output_chunks():
    g = lambda p, x, scale: {"logits": f(p, x) * scale}
    kfn = ntkc.ntk_fn(g, (), vmap_axes=0, method="structured", memory_limit=8192,
                      by_param=True)
    assert kfn.prepare(X1, X2, P, scale=2.0)[0].chunk is not None
    got = kfn(X1, X2, P, scale=2.0)
    whole = reference_ntk(g, X1, X2, P, (), scale=2.0)
    np.testing.assert_allclose(sum(jax.tree.leaves(got["logits"])), whole["logits"],
                               rtol=1e-10, atol=1e-12)


def test_under_the_users_jit():
    # chunks of 4 outputs with blocks of one example inside: both splits, in one jit (at
    # LIMIT's chunks of 2 the jitted program is twice as large and takes 40 s to compile)
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured", memory_limit=12000)
    config, inner = _splits(kfn, X1, X2)
    assert config.chunk == (1, 4) and inner.block == 1
    got = jax.jit(lambda x1, x2, p: kfn(x1, x2, p))(X1, X2, P)
    np.testing.assert_allclose(got, reference_ntk(f, X1, X2, P, ()), rtol=1e-10, atol=1e-12)


def _count_calls(obj, *names) -> dict:
    """Wraps methods of ``obj`` to count their calls in the returned dict."""
    calls = dict.fromkeys(names, 0)

    def counting(name, method):
        def wrapper(*args):
            calls[name] += 1
            return method(*args)
        return wrapper

    for name in names:
        setattr(obj, name, counting(name, getattr(obj, name)))
    return calls


# One example per side: no example blocks inside a chunk, so a method with sides and pairs
# (Method.gram) computes each chunk's side once per row of chunks and pairs the sides (where
# the output axis is kept: traced or diagonal, each chunk's pair is one program). (The
# jacobian method's chunk is as large as two sides' Jacobians allow, so its two sides never
# fit in their share of memory_limit: its chunks stay one program per pair.)
@pytest.mark.quick
@pytest.mark.parametrize("method, limit", [("structured", 6000)])
@pytest.mark.parametrize("trace_axes, diagonal_axes", AXES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_chunk_sides_computed_once_per_row_equal_the_kernel(method, limit, trace_axes,
                                                           diagonal_axes, symmetric, monkeypatch):
    # XLA's memory analysis says the side and pair programs fit (at these tiny sizes its count
    # of the params and outputs alone exceeds the limit; the refusal is tested below)
    monkeypatch.setattr(_split, "_program_bytes", lambda compiled: 0)
    x1, x2 = X1[:1], None if symmetric else X2[1:2]
    kfn = ntkc.ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=0, method=method,
                      memory_limit=limit)
    config, inner = _splits(kfn, x1, x2)
    assert config.chunk is not None and inner.block is None and inner.method == method
    calls = _count_calls(kfn._chunk_sides(*config.chunk), "side", "pair", "pair_self")
    got = kfn(x1, x2, P)
    np.testing.assert_allclose(got, reference_ntk(f, x1, x2, P, trace_axes, diagonal_axes),
                               rtol=1e-10, atol=1e-12)
    n = 12 // config.chunk[1]
    if trace_axes or diagonal_axes:  # each chunk meets only itself: no side to reuse
        assert calls == {"side": 0, "pair": 0, "pair_self": 0}
        return
    # x2=None: the blocks below the diagonal mirror those above it, and a diagonal block pairs
    # its row's side with itself (one argument, see the test below)
    pairs = n * (n - 1) // 2 if symmetric else n * n
    diagonal = n if symmetric else 0
    rows_and_columns = n + pairs if symmetric else n + pairs
    assert calls == {"side": rows_and_columns, "pair": pairs, "pair_self": diagonal}


def test_a_diagonal_chunk_pairs_its_side_with_itself_in_one_program(monkeypatch):
    """x2=None: the program of a diagonal block takes the row's side once, so XLA computes the
    steps that x2's operands repeat once (here each side's weight gradient of the convolution;
    the pair program, given the side twice as two arguments, cannot know they are the same
    arrays): fewer FLOPs, the same block."""
    monkeypatch.setattr(_split, "_program_bytes", lambda compiled: 0)
    g, p, x, _ = _conv_model()
    kfn = ntkc.ntk_fn(g, (), vmap_axes=0, method="structured", memory_limit=16000)
    config, _ = _splits_of(kfn, x, None, p)
    assert config.chunk is not None
    sides = kfn._chunk_sides(*config.chunk)
    pair_config, dyn = sides.config(x, None, p, {})
    side = sides.side(pair_config, dyn, x, 0, p)
    np.testing.assert_allclose(sides.pair_self(pair_config, side, p),
                               sides.pair(pair_config, side, side, p), rtol=1e-12, atol=1e-14)
    flops = {kind: sides._program(kind, pair_config, _split._abstract(args)).cost_analysis()
             for kind, args in (("self", (side, p)), ("pair", (side, side, p)))}
    flops = {k: (c[0] if isinstance(c, list) else c)["flops"] for k, c in flops.items()}
    assert flops["self"] < 0.8 * flops["pair"], flops


@pytest.mark.parametrize("analysis", ["too large", "none"])
def test_chunks_whose_sides_do_not_fit_are_paired_inside_one_program(monkeypatch, analysis):
    """When XLA's memory analysis of the side and pair programs exceeds memory_limit (or,
    without one, two sides exceed their share), each pair of chunks is one program again (both
    sides computed inside it): same kernel, no side calls."""
    monkeypatch.setattr(_split, "_program_bytes",
                        lambda compiled: 2**60 if analysis == "too large" else None)
    monkeypatch.setattr(_split, "SIDES_SHARE", 0.0)
    x1, x2 = X1[:1], X2[1:2]
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, method="structured", memory_limit=6000)
    config, _ = _splits(kfn, x1, x2)
    calls = _count_calls(kfn._chunk_sides(*config.chunk), "side", "pair")
    np.testing.assert_allclose(kfn(x1, x2, P), reference_ntk(f, x1, x2, P, ()),
                               rtol=1e-10, atol=1e-12)
    assert calls == {"side": 0, "pair": 0}


def _conv_model():
    r = np.random.default_rng(3)
    p = {"c": r.standard_normal((3, 3, 2, 3)) / 4, "w": r.standard_normal((48, 10)) / 7}

    def g(p, x):
        h = jax.lax.conv_general_dilated(x, p["c"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h).reshape(x.shape[0], -1) @ p["w"]

    return g, p, r.standard_normal((1, 4, 4, 2)), r.standard_normal((1, 4, 4, 2))


def test_chunk_sides_of_a_convolutional_model(monkeypatch):
    """A model with convolutions: on CPU its programs take XLA options (hashable keys)."""
    monkeypatch.setattr(_split, "_program_bytes", lambda compiled: 0)
    g, p, x1, x2 = _conv_model()
    kfn = ntkc.ntk_fn(g, (), vmap_axes=0, method="structured", memory_limit=16000)
    config, inner = _splits_of(kfn, x1, x2, p)
    assert config.chunk is not None and inner.block is None
    calls = _count_calls(kfn._chunk_sides(*config.chunk), "pair")
    for other in (None, x2):
        np.testing.assert_allclose(kfn(x1, other, p), reference_ntk(g, x1, other, p, ()),
                                   rtol=1e-10, atol=1e-12)
    assert calls["pair"] > 0


def test_chunk_sides_under_the_users_jit_with_kwargs():
    g = lambda p, x, scale: f(p, x) * scale
    kfn = ntkc.ntk_fn(g, (), vmap_axes=0, method="structured", memory_limit=6000)
    x1, x2 = X1[:1], X2[:1]
    assert kfn.prepare(x1, x2, P, scale=2.0)[0].chunk is not None
    got = jax.jit(lambda a, b, p, s: kfn(a, b, p, scale=s))(x1, x2, P, 2.0)
    np.testing.assert_allclose(got, reference_ntk(g, x1, x2, P, (), scale=2.0),
                               rtol=1e-10, atol=1e-12)


def test_nothing_fits_names_both_splits():
    with pytest.raises(ntkc.PathMemoryError, match="not even for one example at a time, nor "
                                                    "for one output at a time"):
        ntkc.ntk_fn(f, (), vmap_axes=0, method="jacobian", memory_limit=2048)(X1, X2, P)


def test_compile_holds_an_output_split():
    """ntkc.compile of a kernel streamed over outputs: one program holding every chunk, equal to
    the reference; its plan names the split."""
    options = dict(trace_axes=(), vmap_axes=0, method="structured", memory_limit=16384)
    compiled = ntkc.compile(f, X1, X2, P, **options)
    assert "in chunks of 6 of the 12 outputs along output axis 1" in str(compiled.plan.split)
    assert compiled.method == "structured"
    np.testing.assert_allclose(compiled(X1, X2, P), reference_ntk(f, X1, X2, P, ()),
                               rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ a regression

def test_structured_unbatched_inputs_that_differ_between_the_sides():
    """An unbatched input leaf (or keyword argument) of x1 and x2 is each side's own: the
    structured method once reused x1's (closed over as a constant) for x2."""
    g = lambda p, xs: jnp.tanh(xs[0] @ p["w"] * xs[1]) @ p["v"]
    x1 = (X1, jnp.asarray(1.0))
    x2 = (X2, jnp.asarray(3.0))
    got = ntkc.ntk_fn(g, vmap_axes=((0, None), 0, {}), method="structured")(x1, x2, P)
    np.testing.assert_allclose(got, reference_ntk(g, x1, x2, P), rtol=1e-10, atol=1e-12)
    h = lambda p, x, s, train: g(p, (x, s)) * (2.0 if train else 1.0)
    kwargs = dict(s=(jnp.asarray(1.0), jnp.asarray(3.0)), train=(True, False))
    got = ntkc.ntk_fn(h, vmap_axes=0, method="structured")(X1, X2, P, **kwargs)
    k1 = lambda p, x: h(p, x, jnp.asarray(1.0), True)
    k2 = lambda p, x: h(p, x, jnp.asarray(3.0), False)
    j1 = jax.jacrev(k1)(P, X1)
    j2 = jax.jacrev(k2)(P, X2)
    want = sum(np.einsum("aok,bok->ab", np.asarray(a).reshape(6, 12, -1),
                         np.asarray(b).reshape(5, 12, -1)) / 12
               for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_plan_names_the_output_chunks():
    plan = ntkc.plan(f, X1, X2, P, trace_axes=(), vmap_axes=0, memory_limit=16384)
    assert str(plan.split).endswith("in chunks of 6 of the 12 outputs along output axis 1")
    assert plan.terms


@pytest.mark.parametrize("x2", [None, X2])
def test_plan_of_free_output_chunks_is_the_call_of_two_different_chunks(x2):
    """Most calls of a free output axis's split pair two different chunks (with x2=None too):
    the plan shows that call's method, which may differ from a chunk paired with itself."""
    kfn = ntkc.ntk_fn(f, (), vmap_axes=0, memory_limit=16384)
    config, _ = kfn.prepare(X1, x2, P)
    axis, size = config.chunk
    two = kfn._chunk_fn(axis, size).prepare((X1, _split.output_start(0)),
                                            (X1 if x2 is None else x2, _split.output_start(size)),
                                            P)[0]
    plan = ntkc.plan(f, X1, x2, P, trace_axes=(), vmap_axes=0, memory_limit=16384)
    if two.block:  # that call in turn splits its examples: the plan is of one of its blocks
        assert plan.split.examples == two.block
    else:
        assert plan.split.examples is None and plan.method == two.method
    np.testing.assert_allclose(plan.kernel(X1, x2, P), reference_ntk(f, X1, x2, P, ()),
                               rtol=1e-10, atol=1e-12)
