"""The benchmark suite runs end to end on a tiny case (speed itself is never asserted here)."""

import json

import pytest

from ntkc import cli


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = cli.main(["bench", "--models", "mixer", "--n", "2", "--methods", "jacobian,structured,auto",
                       "--trace", "traced", "--repeats", "1", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    rows = [r for r in report["rows"] if not r.get("summary")]
    assert [r["method"] for r in rows] == ["jacobian", "structured", "auto"]
    for r in rows:
        assert r["rel_err_vs_jacobian"] < 1e-5
        assert r["run_s_median"] > 0 and r["compile_s"] > 0 and r["peak_bytes"] > 0
    (summary,) = [r for r in report["rows"] if r.get("summary")]
    assert sorted(summary["measured_ranking"]) == ["jacobian", "structured"]
    assert "measured ranking" in capsys.readouterr().out


def test_bench_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--models", "nope"])
    assert info.value.code == 2
    assert "unknown ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("n", range(1, 7))
def test_balanced_orders_let_every_method_follow_every_other_equally_often(n):
    from bench.suite import balanced_orders

    rows = balanced_orders(n)
    assert all(sorted(row) == list(range(n)) for row in rows)
    follows = {}
    for row in rows:
        for before, after in zip(row, row[1:]):
            follows[before, after] = follows.get((before, after), 0) + 1
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(follows.values())) <= 1


# ----------------------------------------------------------------------------------------------
# bench/compare_nt.py, the comparison with neural-tangents: case selection and the worker's x2,
# run in this environment with ntkc (the harness's own virtual environments are not needed).


def _compare_args(*argv):
    from bench import compare_nt

    ap = compare_nt.parser()
    args = ap.parse_args(list(argv))
    return compare_nt, ap, args


def test_compare_nt_paper_suite_runs_each_case_at_its_own_size_with_and_without_x2():
    compare_nt, ap, args = _compare_args("--suite", "paper")
    cases = compare_nt.select_cases(args, ap.error)
    assert [(c["model"], c["n"], c["outputs"]) for c in cases[::4]] == [
        ("fcn", 16, 8), ("resnet18_8x8", 8, 8), ("wrn28_10", 8, 10)]
    assert [(c["trace_axes"], c["x2"]) for c in cases[:4]] == [
        ([], False), ([], True), ([-1], False), ([-1], True)]
    assert cases[0]["factory"] == "fcn" and cases[0]["kwargs"] == dict(n=16, outputs=8, width=2048)
    assert len({compare_nt.case_key(c) for c in cases}) == len(cases) == 12
    assert len({compare_nt._file_key(c) for c in cases}) == 12


def test_compare_nt_overrides_and_the_small_suites_defaults():
    compare_nt, ap, args = _compare_args("--suite", "paper", "--models", "resnet18_1x128", "--n", "2",
                                         "--outputs", "4", "--trace", "untraced", "--x2", "given")
    (case,) = compare_nt.select_cases(args, ap.error)
    assert case["kwargs"] == dict(n=2, outputs=4) and (case["n"], case["outputs"]) == (2, 4)
    assert (case["trace_axes"], case["x2"]) == ([], True)

    compare_nt, ap, args = _compare_args("--models", "mlp", "--quick")  # the small suite, as before
    cases = compare_nt.select_cases(args, ap.error)
    assert [(c["n"], c["outputs"], c["trace_axes"], c["x2"]) for c in cases] == [
        (8, 10, [], False), (8, 10, [-1], False)]
    assert "factory" not in cases[0]


def test_compare_nt_rejects_unknown_models_and_methods(capsys):
    for argv in (["--suite", "paper", "--models", "mlp"], ["--models", "fcn"]):
        compare_nt, ap, args = _compare_args(*argv)
        with pytest.raises(SystemExit):
            compare_nt.select_cases(args, ap.error)
    assert "unknown models ['mlp'] in the paper suite" in capsys.readouterr().err
    compare_nt, ap, args = _compare_args("--methods", "structured,auto", "--nt-methods", "nope")
    with pytest.raises(SystemExit):
        compare_nt.method_lists(args, ap.error)


def test_compare_nt_method_lists_keep_the_order_given():
    compare_nt, ap, args = _compare_args("--methods", "structured,auto", "--nt-methods",
                                         "structured,jacobian,auto", "--no-nt-auto")
    methods = compare_nt.method_lists(args, ap.error)
    assert methods["ntkc-0.9.2"] == ["structured", "auto"]
    assert methods["nt-0.9.2"] == ["structured", "jacobian"]
    compare_nt, ap, args = _compare_args("--methods", "jacobian,structured")
    assert compare_nt.method_lists(args, ap.error)["nt-0.9.2"] == ["jacobian", "structured"]


def test_compare_nt_worker_computes_the_symmetric_and_the_cross_kernel(tmp_path):
    import numpy as np

    from bench import compare_nt, paper_models
    from ntkc.testing import reference_ntk

    kwargs = dict(n=2, outputs=3, width=8, depth=2, inputs=5)
    f, params, x1, x2 = paper_models.fcn(**kwargs)
    assert not np.allclose(x1, x2)
    for given in (False, True):
        spec = {"lib": "ntkc", "model": "fcn", "factory": "fcn", "kwargs": kwargs, "n": 2,
                "outputs": 3, "trace_axes": [], "x2": given, "methods": ["structured", "auto"],
                "repeats": 1, "kernel_path": str(tmp_path / f"{given}-{{method}}.npy")}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        assert compare_nt.worker(str(tmp_path / "spec.json"), str(tmp_path / "out.json")) == 0
        out = json.loads((tmp_path / "out.json").read_text())
        assert [r["method"] for r in out["results"]] == ["structured", "auto"]
        assert all("error" not in r and len(r["run_s"]) == 1 for r in out["results"])
        want = reference_ntk(f, x1, x2 if given else None, params, trace_axes=())
        for method in ("structured", "auto"):
            theta = np.load(tmp_path / f"{given}-{method}.npy")
            assert theta.shape == (2, 2, 3, 3)
            np.testing.assert_allclose(theta, want, rtol=1e-4, atol=1e-6)


def test_compare_nt_worker_reports_a_program_over_max_bytes_without_running_it(tmp_path):
    from bench import compare_nt

    spec = {"lib": "ntkc", "model": "mlp", "n": 2, "outputs": 2, "trace_axes": [-1], "x2": True,
            "methods": ["structured"], "repeats": 1, "kernel_path": None, "max_bytes": 1}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert compare_nt.worker(str(tmp_path / "spec.json"), str(tmp_path / "out.json")) == 0
    (r,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert r["error"].startswith("MemoryError: not run: XLA's memory analysis") and "run_s" not in r
    _, _, x2 = compare_nt.build(dict(spec, x2=True))[1:]
    _, _, none = compare_nt.build(spec | {"x2": False})[1:]
    assert x2.shape == (2, 784) and none is None
