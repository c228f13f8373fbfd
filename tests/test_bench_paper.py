"""The paper's suite (``ntkc bench --suite paper``) runs end to end on a miniature FCN, and a
method that does not fit memory_limit is reported, not crashed on (speed is never asserted)."""

import json

import pytest

from ntkc import cli

RATES = json.dumps({"matmul_gflops": 10.0, "conv_gflops": 10.0})  # skip measuring the rates
TINY = ["--cases", "fcn", "--width", "8", "--n", "2", "--outputs", "3", "--repeats", "1",
        "--inline", "--rates", RATES]


def _report(path):
    return json.loads(path.read_text()), path.with_suffix(".md").read_text()


def test_paper_suite_on_a_miniature_fcn(tmp_path):
    out = tmp_path / "paper.json"
    assert cli.main(["bench", "--suite", "paper", *TINY, "--x2", "given", "--trace", "untraced",
                     "--json", str(out)]) == 0
    report, table = _report(out)
    header = table.splitlines()[2]
    for column in ("case", "method", "plan / status", "compile s", "median s", "XLA GFLOP",
                   "floor GFLOP", "XLA / floor", "GFLOP/s", "% matmul", "% conv", "XLA peak MiB",
                   "est. MiB", "rel err"):
        assert f" {column} |" in header
    rows = report["rows"]
    assert [r["method"] for r in rows] == ["structured", "jacobian", "ntvp", "auto"]
    for r in rows:
        assert r["status"] == "ran" and r["x2"] == "given" and r["trace_axes"] == []
        assert r["run_s_median"] > 0 and r["xla_flops"] > 0 and r["xla_peak_bytes"] > 0
        assert r["rel_err_vs_jacobian"] < 1e-5
        assert r["floor_flops"] == r["floor_passes_flops"] + r["floor_terms_flops"] > 0
    assert rows[-1]["plan"] == "structured"  # auto resolved


def test_a_method_that_does_not_fit_is_reported(tmp_path):
    out = tmp_path / "paper.json"
    assert cli.main(["bench", "--suite", "paper", *TINY, "--x2", "none", "--trace", "untraced",
                     "--methods", "structured,jacobian", "--memory-limit-gib", "1e-6",
                     "--json", str(out)]) == 0
    report, table = _report(out)
    for r in report["rows"]:
        assert r["status"].startswith("does not fit: needs ")
        assert r["estimate_bytes"] > 2**30 * 1e-6
        assert "memory_limit" in r["why"]
    full = [line for line in table.splitlines() if "does not fit: needs" in line]
    assert any("| structured |" in line for line in full)
    assert any("| jacobian |" in line for line in full)
    compact = table.splitlines()[-1]  # a row per variant, a column per method
    assert compact.count("does not fit: needs") == 2


def test_an_unknown_case_is_refused():
    with pytest.raises(SystemExit, match="unknown cases"):
        cli.main(["bench", "--suite", "paper", "--cases", "nope", "--rates", RATES])


def test_a_whole_program_over_the_device_memory_is_planned_in_parts(tmp_path, monkeypatch):
    """The unsplit estimate over the device's memory (as ResNet-50 at O=1000 on 24 GiB) does
    not stop the case: under memory_limit it is planned in parts."""
    from ntkc import _compat

    monkeypatch.setattr(_compat, "device_memory_bytes", lambda: 4096)
    out = tmp_path / "paper.json"
    assert cli.main(["bench", "--suite", "paper", *TINY, "--x2", "none", "--trace", "untraced",
                     "--methods", "structured", "--plan-only", "--json", str(out)]) == 0
    (row,) = _report(out)[0]["rows"]
    assert row["status"] == "planned" and row["estimate_bytes"] > 4096


def test_quick_defaults_give_way_to_explicit_values():
    from bench import paper

    full, quick = paper.parse([]), paper.parse(["--quick"])
    assert (full.repeats, full.max_run_s) == (3, 900.0)
    assert (quick.repeats, quick.max_run_s) == (paper.QUICK_REPEATS, paper.QUICK_MAX_RUN_S)
    assert quick.repeats < full.repeats and quick.max_run_s < full.max_run_s
    given = paper.parse(["--quick", "--repeats", "4", "--max-run-s", "60"])
    assert (given.repeats, given.max_run_s) == (4, 60.0)
    # the slowest baselines leave the quick subset only
    assert paper._methods("wrn28_10", quick, paper.METHODS) == ["structured", "auto"]
    assert paper._methods("resnet18_8x8", quick, ["ntvp", "jacobian"]) == ["jacobian"]
    assert paper._methods("fcn", quick, paper.METHODS) == list(paper.METHODS)
    assert paper._methods("wrn28_10", full, paper.METHODS) == list(paper.METHODS)
