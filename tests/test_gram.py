"""ntkc.gram: tiles equal the one-shot kernel; factor reuse; symmetry; any N; by_param;
resumable .npy output."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc import _gram

R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 6)), "v": R.standard_normal((6, 2))}
X1, X2 = R.standard_normal((7, 3)), R.standard_normal((5, 3))  # 7 and 5: not multiples of 3


def f(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


CASES = [(t, m, s) for t in [(-1,), ()] for m in ["structured", "jacobian"] for s in [True, False]]
CASES += [((-1,), m, s) for m in ["ntvp", "auto"] for s in [True, False]]


@pytest.mark.parametrize("trace_axes, method, symmetric", CASES)
def test_tiles_equal_the_one_shot_kernel(trace_axes, method, symmetric):
    x2 = None if symmetric else X2
    want = ntkc.ntk_fn(f, trace_axes, vmap_axes=0, method=method)(X1, x2, PARAMS)
    got = ntkc.gram(f, PARAMS, X1, x2, batch_size=3, progress=False, trace_axes=trace_axes,
                    method=method)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)


def test_blocks_of_different_sizes_need_no_hoisting(monkeypatch):
    hoists = []
    init = _gram._Factored.__init__
    monkeypatch.setattr(_gram._Factored, "__init__",
                        lambda self, *a, **k: init(self, *a, **k) or hoists.append(self.hoist))
    x2 = X2[:2]  # blocks of 3 rows and 2 columns: their paths differ, nothing is hoisted
    got = ntkc.gram(f, PARAMS, X1, x2, batch_size=3, progress=False, method="structured")
    want = ntkc.ntk_fn(f, vmap_axes=0, method="structured")(X1, x2, PARAMS)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    ntkc.gram(f, PARAMS, X1, X2, batch_size=3, progress=False, method="structured")
    assert hoists == [False, True]


def test_auto_without_a_single_method_calls_the_kernel_per_tile(monkeypatch):
    monkeypatch.setattr(_gram, "_single_method", lambda requested, config: None)  # a mix, say
    pairs = count_calls(monkeypatch, "pair")
    got = ntkc.gram(f, PARAMS, X1, X2, batch_size=3, progress=False)
    want = ntkc.ntk_fn(f, vmap_axes=0)(X1, X2, PARAMS)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    assert len(pairs) == 6


@pytest.mark.parametrize("method", ["structured", "ntvp"])
def test_diagonal_output_axis_is_mirrored_once(method):
    g = lambda p, x: jnp.stack([f(p, x), 2 * f(p, x)], axis=1)  # (N, 2, O)
    want = ntkc.ntk_fn(g, (-1,), (1,), vmap_axes=0, method=method)(X1, None, PARAMS)
    got = ntkc.gram(g, PARAMS, X1, batch_size=2, progress=False, diagonal_axes=(1,),
                    method=method)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)


class Interrupted(Exception):
    """Stands in for a killed run (pytest reserves KeyboardInterrupt)."""


def count_calls(monkeypatch, name, fail_at=None):
    """Counts calls of ``_gram._Factored.<name>``; the call number ``fail_at`` raises."""
    calls = []
    original = getattr(_gram._Factored, name)

    def counted(self, *a, **k):
        calls.append(1)
        if len(calls) == fail_at:
            raise Interrupted
        return original(self, *a, **k)

    monkeypatch.setattr(_gram._Factored, name, counted)
    return calls


def test_symmetric_gram_computes_only_the_upper_triangle(monkeypatch):
    pairs = count_calls(monkeypatch, "pair")
    ntkc.gram(f, PARAMS, X1, batch_size=3, progress=False)  # 3 blocks: 6 tiles of 9
    assert len(pairs) == 6


@pytest.mark.parametrize("method", ["structured", "jacobian"])
@pytest.mark.parametrize("symmetric, cache_bytes, n_sides", [
    (True, None, 3), (False, None, 3 + 2),  # all fit: each block's side once
    (True, 0, 3 + 3), (False, 0, 3 + 6),  # none kept: once per row, and per off-diagonal tile
])
def test_each_side_is_computed_once_when_the_cache_holds_them(monkeypatch, method, symmetric,
                                                               cache_bytes, n_sides):
    x2 = None if symmetric else X2
    sides = count_calls(monkeypatch, "side")
    got = ntkc.gram(f, PARAMS, X1, x2, batch_size=3, cache_bytes=cache_bytes, progress=False,
                    method=method)
    assert len(sides) == n_sides
    want = ntkc.ntk_fn(f, vmap_axes=0, method=method)(X1, x2, PARAMS)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)


def test_side_cache_evicts_the_least_recently_used():
    cache = _gram._SideCache(budget=2 * 8)  # two float64 scalars
    computed = []

    def side(key):
        return cache.get(key, lambda: computed.append(key) or np.float64(key))

    for key in [1, 2, 1, 3, 1, 2]:  # 3 evicts 2 (1 was used since), then 2 evicts 3
        side(key)
    assert computed == [1, 2, 3, 2] and cache.used == 16
    assert _gram._tile_order([(0, 0), (0, 3), (3, 3), (3, 6), (0, 6), (6, 6)]) == [
        (0, 0), (0, 3), (0, 6), (3, 6), (3, 3), (6, 6)]  # serpentine


def pytree_f(p, x):
    return jnp.tanh(x @ p["w"][0] + p["w"][1][None]) @ p["v"]


PYTREE_PARAMS = {"w": [PARAMS["w"], R.standard_normal((6,))], "v": PARAMS["v"]}


@pytest.mark.parametrize("method, symmetric", [("structured", True), ("jacobian", False),
                                               ("ntvp", True)])
def test_by_param_leaves_equal_the_one_shot_kernel_and_sum_to_it(method, symmetric):
    x2 = None if symmetric else X2
    got = ntkc.gram(pytree_f, PYTREE_PARAMS, X1, x2, batch_size=3, progress=False,
                    method=method, trace_axes=(), by_param=True)
    want = ntkc.ntk_fn(pytree_f, (), vmap_axes=0, method=method, by_param=True)(
        X1, x2, PYTREE_PARAMS)
    assert jax.tree.structure(got) == jax.tree.structure(PYTREE_PARAMS)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-10, atol=1e-12)
    full = ntkc.ntk_fn(pytree_f, (), vmap_axes=0, method=method)(X1, x2, PYTREE_PARAMS)
    np.testing.assert_allclose(sum(jax.tree.leaves(got)), full, rtol=1e-10, atol=1e-12)


def test_by_param_with_out_is_refused(tmp_path):
    with pytest.raises(ValueError, match="by_param"):
        ntkc.gram(f, PARAMS, X1, out=tmp_path / "k.npy", by_param=True, progress=False)


def test_resume_after_an_interruption(tmp_path, monkeypatch):
    out = tmp_path / "kernel.npy"
    want = np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(X1, None, PARAMS))
    calls = count_calls(monkeypatch, "pair", fail_at=3)
    with pytest.raises(Interrupted):
        ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    assert len(json.loads((tmp_path / "kernel.npy.progress.json").read_text())["done"]) == 2
    monkeypatch.undo()
    calls = count_calls(monkeypatch, "pair")
    got = ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    assert len(calls) == 4  # the 4 tiles left of 6, nothing computed twice
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.load(out), want, rtol=1e-10, atol=1e-12)


def test_a_file_for_other_params_is_refused(tmp_path):
    out = tmp_path / "kernel.npy"
    ntkc.gram(f, PARAMS, X1, batch_size=4, out=out, progress=False)
    other = {**PARAMS, "w": PARAMS["w"] + 1}
    with pytest.raises(ValueError, match="another params"):
        ntkc.gram(f, other, X1, batch_size=4, out=out, progress=False)


def relu_f(p, x):
    return jax.nn.relu(x @ p["w"]) @ p["v"]


def scaled(shift):
    """A closure over an array: re-created identical, or with other values."""
    shift = jnp.asarray(shift)[None]
    return lambda p, x: jnp.tanh(x @ p["w"] + shift) @ p["v"]


def test_a_file_for_another_function_is_refused_after_an_interruption(tmp_path, monkeypatch):
    out = tmp_path / "kernel.npy"
    count_calls(monkeypatch, "pair", fail_at=3)
    with pytest.raises(Interrupted):
        ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    monkeypatch.undo()
    calls = count_calls(monkeypatch, "pair")
    with pytest.raises(ValueError, match=r"kernel.npy was written for another function;.*"
                                         r"first differs.*tanh.*custom_jvp_call"):
        ntkc.gram(relu_f, PARAMS, X1, batch_size=3, out=out, progress=False)
    assert not calls  # refused before any tile
    with pytest.raises(ValueError, match="another function and data"):
        ntkc.gram(relu_f, PARAMS, X1 + 1, batch_size=3, out=out, progress=False)


def test_an_identical_recreated_closure_resumes_and_another_closure_is_refused(tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "kernel.npy"
    shift = np.linspace(-1, 1, 6)
    want = np.asarray(ntkc.ntk_fn(scaled(shift), vmap_axes=0)(X1, None, PARAMS))
    count_calls(monkeypatch, "pair", fail_at=3)
    with pytest.raises(Interrupted):
        ntkc.gram(scaled(shift), PARAMS, X1, batch_size=3, out=out, progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="another function"):  # same program, other constant
        ntkc.gram(scaled(shift + 1), PARAMS, X1, batch_size=3, out=out, progress=False)
    calls = count_calls(monkeypatch, "pair")
    got = ntkc.gram(scaled(shift.copy()), PARAMS, X1, batch_size=3, out=out, progress=False)
    assert len(calls) == 4
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


def test_gram_refuses_interacting_examples_saying_why():
    with pytest.raises(ValueError, match=r"vmap_axes=None.*cannot be computed in tiles.*"
                                         r"ntk_fn\(f, vmap_axes=None\)"):
        ntkc.gram(f, PARAMS, X1, vmap_axes=None, progress=False)
    centred = lambda p, x: f(p, x - x.mean(0, keepdims=True))
    with pytest.raises(ValueError, match="examples interact"):
        ntkc.gram(centred, PARAMS, X1, batch_size=3, progress=False)


def test_batch_size_from_memory_limit_and_errors():
    got = ntkc.gram(f, PARAMS, X1, memory_limit=2**20, progress=False)
    want = ntkc.ntk_fn(f, vmap_axes=0)(X1, None, PARAMS)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        ntkc.gram(f, PARAMS, X1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="example axis"):
        ntkc.gram(f, PARAMS, X1, progress=False, trace_axes=(0,))
    with pytest.raises(ValueError, match="cache_bytes"):
        ntkc.gram(f, PARAMS, X1, cache_bytes=-1, progress=False)
    with pytest.raises(ValueError, match="devices"):
        ntkc.gram(f, PARAMS, X1, devices=[], progress=False)


def test_progress_bar_counts_tiles(capsys):
    ntkc.gram(f, PARAMS, X1, X2, batch_size=3, progress=True)
    assert "6/6" in capsys.readouterr().err


def test_batch_size_is_the_largest_power_of_two_whose_tile_fits_whole():
    x = np.random.default_rng(5).standard_normal((16, 3))
    limit = 6_000  # bytes: a few examples' per-example Jacobians a side
    kfn = ntkc.ntk_fn(f, vmap_axes=0, method="jacobian", memory_limit=limit)
    size = _gram._choose_batch_size(kfn, PARAMS, x, 16, limit)
    assert 1 <= size < 16 and size & (size - 1) == 0
    fits = lambda s: kfn.prepare(x[:s], x[:s] + 0, PARAMS)[0].block is None
    assert fits(size) and not fits(2 * size)
    got = ntkc.gram(f, PARAMS, x, memory_limit=limit, method="jacobian", progress=False)
    np.testing.assert_allclose(got, np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(x, None, PARAMS)),
                               rtol=1e-10, atol=1e-12)


def test_an_explicit_batch_size_that_does_not_fit_memory_limit_is_refused():
    x = np.random.default_rng(6).standard_normal((16, 3))
    with pytest.raises(ValueError, match=r"batch_size=16: .* does not fit memory_limit=6000 .* "
                                         r"use batch_size <= \d"):
        ntkc.gram(f, PARAMS, x, batch_size=16, memory_limit=6_000, method="jacobian",
                  progress=False)


@pytest.mark.parametrize("symmetric", [True, False])
def test_hoisted_steps_collected_in_the_tiles_orders(symmetric):
    """A block's side program collects its local steps from the block paired with itself as
    two sides, as every tile sees them. As one side, x2's repeated steps would be free and this
    model's traced terms would take another order (x2=None's, see tests/test_structured.py's
    token model) than the tiles expect."""
    r = np.random.default_rng(4)
    p = {"w": r.standard_normal((32, 16)) / 32 ** 0.5, "v": r.standard_normal((16, 4))}
    g = lambda p, x: jnp.mean(jnp.tanh(x @ p["w"]) @ p["v"], axis=-2)  # x: (N, 16 tokens, 32)
    x1, x2 = r.standard_normal((4, 16, 32)), r.standard_normal((2, 16, 32))
    x2 = None if symmetric else x2
    got = ntkc.gram(g, p, x1, x2, batch_size=2, progress=False, trace_axes=(-1,),
                    method="structured")
    want = ntkc.ntk_fn(g, (-1,), vmap_axes=0, method="structured")(x1, x2, p)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)
