"""bench/scaling.py: the exponent fit, the memory and time budgets, and a tiny real sweep.

Speed itself is never asserted here; matplotlib is not needed (the plot is checked against a fake).
"""

import json
import sys
import types

import jax
import numpy as np
import pytest

from bench import scaling
from bench.models import mlp
from ntkc import cli


def test_fit_recovers_known_exponents_from_noisy_data():
    rng = np.random.default_rng(0)
    widths = np.array([64, 128, 256, 512, 1024, 2048, 4096])
    for exponent, c in ((2.0, 3e-8), (1.0, 2e-5), (1.5, 1e-6)):
        times = c * widths**exponent * np.exp(rng.normal(0, 0.05, widths.size))
        fit = scaling.fit_exponent(widths, times, noise_floor=0.0)
        assert fit["exponent"] == pytest.approx(exponent, abs=0.05)
        assert fit["prefactor"] == pytest.approx(c, rel=0.3)
        assert fit["r2"] > 0.99 and fit["used"] == list(map(float, widths))


def test_fit_leaves_out_points_under_the_noise_floor_only_when_enough_remain():
    widths = [16, 32, 64, 128, 256, 512]
    # a 1 ms floor of overhead under a clean t = 1e-9 w^3 curve
    times = [max(1e-9 * w**3, 1e-3) for w in widths]
    fit = scaling.fit_exponent(widths, times, noise_floor=1.5e-3)
    assert fit["floor_applied"] and fit["used"] == [128.0, 256.0, 512.0]
    assert fit["exponent"] == pytest.approx(3.0, abs=1e-9)
    everything = scaling.fit_exponent(widths, times, noise_floor=0.0)
    assert everything["exponent"] < 2.5  # the floor flattens the curve when it is kept
    # fewer than three points above the floor: every point is used
    few = scaling.fit_exponent([1, 2, 4, 8], [1e-4, 1e-4, 2e-3, 4e-3], noise_floor=1e-3)
    assert not few["floor_applied"] and len(few["used"]) == 4
    assert scaling.fit_exponent([8], [1.0])["exponent"] is None
    assert scaling.fit_exponent([], [])["exponent"] is None


def test_sizes():
    _, params, _ = mlp(n=2, width=24)
    assert scaling.mlp_params(24) == sum(leaf.size for leaf in jax.tree.leaves(params))
    assert scaling.jacobian_bytes(8, 10, 1000) == 8 * 10 * 1000 * 4
    assert scaling.parse_bytes("4GiB") == 4 * 2**30
    assert scaling.parse_bytes("512MiB") == 512 * 2**20
    assert scaling.parse_bytes("1e6") == 10**6


def test_points_over_the_memory_budget_are_skipped_and_recorded():
    lines = []
    # jacobian: N*O*P*4 of the width-64 MLP at N=2 is 4.7 MB, over 3 MB, so it is skipped before
    # compiling; width 8 (0.5 MB) runs. structured runs at both widths (its program is smaller).
    points = scaling.sweep("width", [8, 64], 2, ["jacobian", "structured"], [(-1,)], 10, 1,
                           max_bytes=3_000_000, point_budget_s=60.0, log=lines.append)
    status = {(p["width"], p["method"]): p["status"] for p in points}
    assert status == {(8, "jacobian"): "ok", (8, "structured"): "ok",
                      (64, "jacobian"): "skipped", (64, "structured"): "ok"}
    skipped = next(p for p in points if p["status"] == "skipped")
    assert skipped["reason"].startswith("memory: N*O*P*4")
    assert skipped["jacobian_bytes"] == scaling.jacobian_bytes(2, 10, scaling.mlp_params(64)) > 3_000_000
    assert "run_s_median" not in skipped and len(lines) == 4
    # XLA's peak of the compiled program is checked for every method
    (tiny,) = scaling.sweep("n", [2], 16, ["structured"], [(-1,)], 10, 1, max_bytes=1000,
                            point_budget_s=60.0, log=lambda _: None)
    assert tiny["status"] == "skipped" and tiny["reason"].startswith("XLA peak")
    fits = scaling.fit_curves(points)
    jac = next(f for f in fits if f["method"] == "jacobian")
    assert jac["measured"] == 1 and jac["skipped"] == 1 and jac["exponent"] is None


def test_a_point_over_the_time_budget_stops_its_curve():
    points = scaling.sweep("n", [2, 4], 16, ["structured"], [(-1,)], 10, 3, max_bytes=2**30,
                           point_budget_s=0.0, log=lambda _: None)
    first, second = points
    assert first["status"] == "ok" and first["budget_hit"] and first["runs"] == 1
    assert second["status"] == "skipped" and second["reason"].startswith("time budget")


def test_tiny_sweep_writes_well_formed_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "scaling.json"
    status = cli.main(["bench", "--scaling", "--widths", "16,32", "--ns", "2,4", "--repeats", "1",
                         "--trace", "traced", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "scaling" and report["settings"]["repeats"] == 1
    points = report["points"]
    assert len(points) == 2 * 2 * 3
    assert {(p["sweep"], p["width"], p["n"]) for p in points} == {
        ("width", 16, 8), ("width", 32, 8), ("n", 512, 2), ("n", 512, 4)}
    for p in points:
        assert p["status"] == "ok" and p["trace_axes"] == [-1] and p["runs"] == 1
        assert p["run_s_median"] > 0 and p["compile_s"] > 0 and p["peak_bytes"] > 0
    assert len(report["fits"]) == 2 * 3
    for fit in report["fits"]:
        assert fit["method"] in ("jacobian", "ntvp", "structured") and fit["measured"] == 2
        assert isinstance(fit["exponent"], float) and isinstance(fit["flops_exponent"], float)
    text = capsys.readouterr().out
    assert "width exp" in text and "N exp" in text and "matplotlib is not importable" in text
    assert not out.with_suffix(".png").exists()


def test_plot_draws_one_line_per_curve_with_its_exponent(tmp_path, monkeypatch):
    """Against a fake matplotlib.figure (the real one is optional)."""
    drawn = []

    class Axes:
        def loglog(self, xs, ys, **kw):
            drawn.append((list(xs), list(ys), kw["label"]))

        def __getattr__(self, name):
            return lambda *a, **k: None

    class Figure:
        def __init__(self, **kw):
            pass

        def subplots(self, rows, cols):
            return [Axes() for _ in range(cols)]

        def suptitle(self, text):
            pass

        def savefig(self, path, **kw):
            path.write_bytes(b"png")

    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", types.SimpleNamespace(Figure=Figure))
    point = dict(status="ok", trace_axes=[], n=8, width=64)
    points = [dict(point, sweep="width", method="jacobian", width=w, run_s_median=t)
              for w, t in ((64, 0.01), (128, 0.04))]
    points += [dict(point, sweep="n", method="jacobian", width=512, n=k, run_s_median=t)
               for k, t in ((4, 0.1), (8, 0.4))]
    report = {"settings": {"n": 8, "width": 512, "outputs": 10, "noise_floor_s": 1e-3},
              "points": points, "fits": scaling.fit_curves(points), "ntkc": "0", "device": "cpu",
              "jax": "0"}
    path = scaling.plot(report, tmp_path / "s.png")
    assert path.read_bytes() == b"png"
    assert [d[0] for d in drawn] == [[64, 128], [4, 8]]
    assert all("slope 2.00" in d[2] and "jacobian" in d[2] for d in drawn)
