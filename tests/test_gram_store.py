"""The tile store (ntkc.gram(..., out=DIR), ntkc.open_gram) in one process: equals the one-shot
kernel, reads slices lazily and mirrored, resumes, refuses another kernel's store."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc import _gram

R = np.random.default_rng(0)
PARAMS = {"w": R.standard_normal((3, 6)), "v": R.standard_normal((6, 2))}
X1, X2 = R.standard_normal((7, 3)), R.standard_normal((5, 3))


def f(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def two(p, x):  # (N, 2, O): a diagonal axis
    return jnp.stack([f(p, x), 2 * f(p, x)], axis=1)


KEYS = [(slice(None),), (slice(1, 6), slice(None, None, 2)), (3,), (-1, 2), (2, slice(6, 0, -2)),
        (Ellipsis, 0), (slice(None, None, -1), 4, Ellipsis), (slice(5, 5),), (np.int64(6),)]


@pytest.mark.quick
@pytest.mark.parametrize("fn, x2, options", [
    (f, None, dict(trace_axes=())), (f, X2, dict(trace_axes=())),
    (two, None, dict(diagonal_axes=(1,))), (f, X2, {})])
def test_store_equals_the_one_shot_kernel_and_reads_any_slice(tmp_path, fn, x2, options):
    want = np.asarray(ntkc.ntk_fn(fn, vmap_axes=0, **options)(X1, x2, PARAMS))
    got = ntkc.gram(fn, PARAMS, X1, x2, batch_size=3, out=tmp_path / "k", progress=False,
                    **options)
    assert isinstance(got, ntkc.GramArray) and got.complete
    assert (got.shape, got.dtype, got.ndim, len(got)) == (want.shape, want.dtype, want.ndim, 7)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12)
        assert got[key].shape == want[key].shape, key
    tiles = sorted(n for n in os.listdir(tmp_path / "k") if n.startswith("tile-"))
    assert len(tiles) == 6  # 3 x 3 blocks: the 6 upper tiles; or 3 x 2 blocks
    assert ntkc.open_gram(tmp_path / "k").manifest["symmetric"] == (x2 is None)


def test_slices_read_only_the_tiles_they_overlap(tmp_path, monkeypatch):
    ntkc.gram(f, PARAMS, X1, batch_size=3, out=tmp_path / "k", progress=False)
    kernel = ntkc.open_gram(tmp_path / "k")
    read = []
    load = np.load
    monkeypatch.setattr(np, "load", lambda path, **k: read.append(os.path.basename(path))
                        or load(path, **k))
    kernel[4:5, 0:2]  # block row 1, block column 0: the mirror of tile (0, 1)
    assert read == ["tile-00000-00001.npy"]
    with pytest.raises(TypeError, match="ints, slices"):
        kernel[[0, 1]]
    with pytest.raises(IndexError):
        kernel[7]


def test_the_store_resumes_and_computes_only_missing_tiles(tmp_path, monkeypatch):
    from test_gram import Interrupted, count_calls

    out = tmp_path / "k"
    count_calls(monkeypatch, "pair", fail_at=3)
    with pytest.raises(Interrupted):
        ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    kernel = ntkc.open_gram(out)
    assert len(kernel.missing) == 4 and "4 of 6 tiles missing" in repr(kernel)
    with pytest.raises(ValueError, match="not computed yet"):
        kernel[...]
    monkeypatch.undo()
    calls = count_calls(monkeypatch, "pair")
    got = ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    assert len(calls) == 4
    want = np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(X1, None, PARAMS))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


def test_a_store_for_another_kernel_is_refused_saying_what_differs(tmp_path, monkeypatch):
    out = tmp_path / "k"
    ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    from test_gram import count_calls

    calls = count_calls(monkeypatch, "pair")
    other = {**PARAMS, "w": PARAMS["w"] + 1}
    with pytest.raises(ValueError, match="k was written for another params; remove the dir"):
        ntkc.gram(f, other, X1, batch_size=3, out=out, progress=False)
    with pytest.raises(ValueError, match="another data"):
        ntkc.gram(f, PARAMS, X1, X2, batch_size=3, out=out, progress=False)
    with pytest.raises(ValueError, match=r"another function;.*first differs"):
        ntkc.gram(lambda p, x: jnp.sin(x @ p["w"]) @ p["v"], PARAMS, X1, batch_size=3, out=out,
                  progress=False)
    with pytest.raises(ValueError, match=r"another options \(options include batch_size"):
        ntkc.gram(f, PARAMS, X1, batch_size=2, out=out, progress=False)
    assert not calls  # refused before any tile
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["block"] == [3, 3] and manifest["shape"] == [7, 7]


def test_out_chooses_a_file_or_a_store_and_foreign_directories_are_refused(tmp_path):
    assert isinstance(ntkc.gram(f, PARAMS, X1, out=tmp_path / "k.npy", progress=False),
                      np.ndarray)
    assert (tmp_path / "k.npy").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a Gram store"):
        ntkc.gram(f, PARAMS, X1, out=tmp_path / "other", progress=False)
    with pytest.raises(FileNotFoundError, match="not a Gram store"):
        ntkc.open_gram(tmp_path / "other")
    (tmp_path / "empty").mkdir()  # an empty directory becomes a store
    assert ntkc.gram(f, PARAMS, X1, out=tmp_path / "empty", progress=False).complete
    with pytest.raises(ValueError, match="by_param"):
        ntkc.gram(f, PARAMS, X1, out=tmp_path / "s", by_param=True, progress=False)


def test_shares_cut_the_serpentine_order_into_contiguous_runs():
    order = _gram._tile_order([(i, j) for i in range(0, 12, 3) for j in range(0, 12, 3) if j >= i])
    shares = _gram._shares(order, 3)
    assert [len(s) for s in shares] == [3, 3, 4] and sum(shares, []) == order
    assert _gram._shares(order[:1], 2) == [[], order[:1]]
