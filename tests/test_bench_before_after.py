"""bench/before_after.py's comparison: ratios per case, the run's own noise, and the flag."""

from bench.before_after import compare, times


def _report(rows):
    return {"rows": [dict(model=m, trace_axes=t, method=k, run_s_median=s) for m, t, k, s in rows]
            + [dict(model="mlp", trace_axes=[], summary=True)]}


def test_times_reads_the_timed_rows_only():
    got = times(_report([("mlp", [], "structured", 1.0), ("cnn", [-1], "jacobian", 2.0)]))
    assert got == {("mlp", "[]", "structured"): 1.0, ("cnn", "[-1]", "jacobian"): 2.0}


def test_a_case_is_slower_only_beyond_slack_and_noise():
    before = [{("a", "[]", "m"): t, ("b", "[]", "m"): 1.0} for t in (1.0, 1.0, 1.0)]
    after = [{("a", "[]", "m"): t, ("b", "[]", "m"): u} for t, u in ((1.2, 1.04), (1.2, 1.04),
                                                                    (1.2, 1.04))]
    rows = {r["model"]: r for r in compare({"old": before, "new": after}, "old", "new", 0.05)}
    assert abs(rows["a"]["ratio"] - 1.2) < 1e-12 and rows["a"]["noise"] == 0
    assert rows["a"]["slower"] and not rows["b"]["slower"]
    # the same 1.2x with rounds spread by 30% is within the run's noise
    noisy = [{("a", "[]", "m"): t} for t in (0.8, 1.0, 1.1)]
    (row,) = compare({"old": noisy, "new": after}, "old", "new", 0.05)
    assert row["noise"] > 0.25 and not row["slower"]
