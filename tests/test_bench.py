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
