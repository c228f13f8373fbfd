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


def test_compare_status_names_refusals_and_out_of_memory():
    from bench._compare import status

    assert status(None) == "ok"
    assert status("MemoryError: not run: XLA's memory analysis of the compiled program says 29.3 "
                  "GiB, over the limit of 14.0 GiB (--max-gib)") == "does not fit: needs 29.3 GiB"
    assert status("PathMemoryError: memory_limit=8: method 'jacobian' needs about 3.2212e+10 bytes "
                  "for the whole batch") == "does not fit: needs 30.0 GiB (ntkc's planner)"
    assert status("PathMemoryError: memory_limit=8: no contraction order fits").startswith(
        "does not fit: needs more than memory_limit")
    for oom in ("XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 31138512896 bytes.",
                "worker exited with -9 (signal 9: killed):\n", "MemoryError: std::bad_alloc"):
        assert status(oom) == "out of memory", oom
    assert status("worker timed out after 60 s") == "worker timed out after 60 s"
    assert status("worker exited with -15 (signal 15: killed):\n") == "killed (signal 15)"
    assert status("worker exited with 1:\nTraceback ...") == "worker exited with 1:"


def test_compare_nt_worker_streams_ntkc_under_memory_limit(tmp_path):
    """Where the whole kernel does not fit memory_limit, ntkc's worker calls the kernel function
    as a user does (chunks of outputs: several programs), not inside one jit."""
    import numpy as np

    from bench import compare_nt, paper_models
    from ntkc.testing import reference_ntk

    kwargs = dict(n=1, outputs=8, width=8, depth=2, inputs=5)
    f, params, x1, x2 = paper_models.fcn(**kwargs)
    spec = {"lib": "ntkc", "model": "fcn", "factory": "fcn", "kwargs": kwargs, "n": 1,
            "outputs": 8, "trace_axes": [], "x2": True, "methods": ["structured"], "repeats": 2,
            "kernel_path": str(tmp_path / "{method}.npy"), "memory_limit": 2000}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert compare_nt.worker(str(tmp_path / "spec.json"), str(tmp_path / "out.json")) == 0
    (r,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert "error" not in r, r
    assert "chunks of" in r["split"] and r["peak_bytes"] is None and r["rss_mib"] > 0
    assert len(r["run_s"]) == 2 and r["compile_s"] >= 0 and r["first_call_s"] > 0
    np.testing.assert_allclose(np.load(tmp_path / "structured.npy"),
                               reference_ntk(f, x1, x2, params, trace_axes=()), rtol=1e-4, atol=1e-6)
    summary = compare_nt.summarize({"structured": [r]})["structured"]
    assert summary["split"] == r["split"] and summary["peak_bytes"] is None


def test_compare_nt_run_worker_reports_a_worker_that_dies_or_times_out(tmp_path, monkeypatch):
    import pathlib
    import sys

    from bench import compare_nt

    monkeypatch.setattr(compare_nt, "_python", lambda folder: pathlib.Path(sys.executable))
    spec = {"lib": "ntkc", "model": "x", "factory": "no_such_model", "kwargs": {}, "n": 1,
            "outputs": 1, "trace_axes": [], "x2": False, "methods": ["structured"], "repeats": 1}
    out = compare_nt.run_worker("ntkc-0.9.2", spec, tmp_path, 600, compare_nt.ROOT)
    assert out["results"] == [] and out["error"].startswith("worker exited with 1")
    assert "no_such_model" in out["error"] and len(out["load_before"]) == 3
    out = compare_nt.run_worker("ntkc-0.9.2", spec, tmp_path, 0.01, compare_nt.ROOT)
    assert out["results"] == [] and out["error"] == "worker timed out after 0 s"


def test_compare_nt_run_goes_on_when_workers_fail_or_are_refused(tmp_path, monkeypatch):
    """A whole (tiny) run: neural-tangents' worker dies at once (here /bin/false stands for it)
    and ntkc's program is refused by --max-gib; the run still writes its report, each failure
    named per method."""
    import pathlib
    import sys

    from bench import compare_nt

    nt_folder = compare_nt.ENVS["nt-0.9.2"][0]  # its worker exits at once, with status 1
    monkeypatch.setattr(compare_nt, "_python", lambda folder: pathlib.Path(
        "/bin/false" if folder == nt_folder else sys.executable))
    monkeypatch.setattr(compare_nt, "setup_env", lambda env, log: None)
    monkeypatch.setattr(compare_nt, "env_versions", lambda env: {})
    status = compare_nt.main(["--models", "mlp", "--n", "2", "--outputs", "2", "--trace", "traced",
                              "--rounds", "1", "--methods", "structured", "--no-old-jax",
                              "--worktree", "--max-gib", "1e-9", "--tag", "t",
                              "--results-dir", str(tmp_path)])
    assert status == 0
    report = json.loads((tmp_path / "compare-nt-t.json").read_text())
    (case,) = report["cases"]
    nt, kc = case["nt-0.9.2"]["structured"], case["ntkc-0.9.2"]["structured"]
    assert nt["error"].startswith("worker exited with 1") and kc["error"].startswith("MemoryError: not run")
    log = (tmp_path / "compare-nt-t.log").read_text()
    assert "ntkc 0.9.2 structured: does not fit: needs 0.0 GiB" in log
    assert case["ratios_ntkc_over_nt"] == {}


def _nt_report(path, nt_s, ours_s, x2, flops=4e9):
    case = {"model": "resnet18_8x8", "x2": x2, "trace_axes": [],
            "nt-0.9.2": {"structured": {"run_s_median": nt_s, "xla_flops": flops}},
            "ntkc-0.9.2": {"structured": {"run_s_median": ours_s, "xla_flops": flops / 2}}}
    path.write_text(json.dumps({"cases": [case]}))
    return str(path)


def test_nt_rates_table_from_comparison_reports(tmp_path, capsys):
    from bench import nt_rates

    old = _nt_report(tmp_path / "old.json", 4.0, 3.0, True)
    new = _nt_report(tmp_path / "new.json", 2.0, 1.0, True)
    symmetric = _nt_report(tmp_path / "sym.json", 1.0, 0.5, False)
    found = nt_rates.rows([old, new, symmetric])
    assert sorted(found) == [("resnet18_8x8", "None", "()"), ("resnet18_8x8", "given", "()")]
    assert found[("resnet18_8x8", "given", "()")]["file"] == "new.json"  # the later file wins
    lines = nt_rates.table(found, {"matmul_gflops": 4.0, "conv_gflops": 8.0})
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    # NT 4 GFLOP in 2 s, ntkc 2 GFLOP in 1 s; half NT's time (1 s) needs 2 GFLOP/s = 50% of 4
    assert cells == ["resnet18_8x8", "given", "()", "2.00", "1.00", "0.50", "4", "2", "2", "2",
                     "2", "50, 50", "25, 25"]
    assert nt_rates.main(["--no-rates", new]) == 0 and "| resnet18_8x8 | given |" in (
        capsys.readouterr().out)
    empty = tmp_path / "empty.json"
    empty.write_text('{"cases": []}')
    with pytest.raises(SystemExit):  # nothing to show is an error, not an empty table
        nt_rates.main(["--no-rates", str(empty)])


def test_traffic_counts_flops_and_bytes_of_the_kernel_program(monkeypatch, capsys):
    from bench import paper, traffic

    monkeypatch.setitem(paper.CASES, "tiny_fcn", ("fcn", dict(n=2, outputs=3, width=16)))
    rows = [traffic.counts("ntkc", "tiny_fcn", given) for given in (False, True)]
    assert [r["x2"] for r in rows] == ["None", "given"]
    # a distinct x2 is a second side: more FLOPs and more traffic than x2=None
    assert 0 < rows[0]["flops"] < rows[1]["flops"]
    assert 0 < rows[0]["bytes_accessed"] < rows[1]["bytes_accessed"]
    assert traffic.main(["nope"]) == 2 and "bench/traffic.py" in capsys.readouterr().out


def test_traffic_ops_splits_xlas_byte_count_by_op():
    import jax
    import jax.numpy as jnp

    from bench import traffic

    f = jax.jit(lambda x, y: jnp.tanh(x @ y).sum(0)[None] * 2 + jnp.transpose(x))
    compiled = f.lower(jnp.ones((64, 32)), jnp.ones((32, 64))).compile()
    rows = traffic.op_bytes(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # every top-level op's operands and result: XLA's own total, op by op
    assert sum(r["bytes"] for r in rows) == pytest.approx(cost["bytes accessed"], rel=0.05)
    assert any("dot" in r["what"] for r in rows)
    assert any("transpose" in r["what"] for r in rows)
    assert traffic._bytes("(f32[2,3]{1,0}, pred[4])") == 2 * 3 * 4 + 4


def test_traffic_ops_reports_groups_and_largest(monkeypatch, capsys):
    from bench import paper, traffic

    monkeypatch.setitem(paper.CASES, "tiny_fcn", ("fcn", dict(n=2, outputs=3, width=16)))
    assert traffic.main(["ops", "ntkc", "tiny_fcn", "given", "5"]) == 0
    out = capsys.readouterr().out
    header = json.loads(out.splitlines()[0])
    assert header["case"] == "tiny_fcn" and header["x2"] == "given" and header["gb"] > 0
    assert "# groups" in out and "# largest" in out
