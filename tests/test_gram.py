"""ntkc.gram: tiles equal the one-shot kernel; symmetry; any N; resumable .npy output."""

import json

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


@pytest.mark.parametrize("trace_axes", [(-1,), ()])
@pytest.mark.parametrize("method", ["structured", "jacobian"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_tiles_equal_the_one_shot_kernel(trace_axes, method, symmetric):
    x2 = None if symmetric else X2
    want = ntkc.ntk_fn(f, trace_axes, vmap_axes=0, method=method)(X1, x2, PARAMS)
    got = ntkc.gram(f, PARAMS, X1, x2, batch_size=3, progress=False, trace_axes=trace_axes,
                    method=method)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)


def test_diagonal_output_axis_is_mirrored_once():
    g = lambda p, x: jnp.stack([f(p, x), 2 * f(p, x)], axis=1)  # (N, 2, O)
    want = ntkc.ntk_fn(g, (-1,), (1,), vmap_axes=0)(X1, None, PARAMS)
    got = ntkc.gram(g, PARAMS, X1, batch_size=2, progress=False, diagonal_axes=(1,))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)


def test_symmetric_gram_computes_only_the_upper_triangle(monkeypatch):
    calls = []
    original = _gram.KernelFunction.__call__
    monkeypatch.setattr(_gram.KernelFunction, "__call__",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    ntkc.gram(f, PARAMS, X1, batch_size=3, progress=False)  # 3 blocks: 6 tiles of 9
    assert len(calls) == 6


class Interrupted(Exception):
    """Stands in for a killed run (pytest reserves KeyboardInterrupt)."""


def test_resume_after_an_interruption(tmp_path, monkeypatch):
    out = tmp_path / "kernel.npy"
    want = np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(X1, None, PARAMS))
    original = _gram.KernelFunction.__call__
    calls, interrupt = [], True

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == 3 and interrupt:
            raise Interrupted
        return original(self, *a, **k)

    monkeypatch.setattr(_gram.KernelFunction, "__call__", flaky)
    with pytest.raises(Interrupted):
        ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    assert len(json.loads((tmp_path / "kernel.npy.progress.json").read_text())["done"]) == 2
    calls.clear()
    interrupt = False
    got = ntkc.gram(f, PARAMS, X1, batch_size=3, out=out, progress=False)
    assert len(calls) == 4  # the 4 tiles left of 6, nothing computed twice
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.load(out), want, rtol=1e-10, atol=1e-12)


def test_a_file_for_other_params_is_refused(tmp_path):
    out = tmp_path / "kernel.npy"
    ntkc.gram(f, PARAMS, X1, batch_size=4, out=out, progress=False)
    other = {**PARAMS, "w": PARAMS["w"] + 1}
    with pytest.raises(ValueError, match="another model"):
        ntkc.gram(f, other, X1, batch_size=4, out=out, progress=False)


def test_batch_size_from_memory_limit_and_errors():
    got = ntkc.gram(f, PARAMS, X1, memory_limit=2**20, progress=False)
    want = ntkc.ntk_fn(f, vmap_axes=0)(X1, None, PARAMS)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        ntkc.gram(f, PARAMS, X1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="example axis"):
        ntkc.gram(f, PARAMS, X1, progress=False, trace_axes=(0,))


def test_progress_bar_counts_tiles(capsys):
    ntkc.gram(f, PARAMS, X1, X2, batch_size=3, progress=True)
    assert "6/6" in capsys.readouterr().err
