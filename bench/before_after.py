"""The benchmark suite at two commits, interleaved: did a change make any case slower?

    python -m bench.before_after --before REV [--after REV] [--rounds 3] [--tag NAME]
                                 [-- <arguments of python -m bench>]

Each commit is exported (``git archive``) to a temporary folder, so that its own ``ntkc/`` and
``bench/`` run; ``--after`` defaults to the working tree (uncommitted edits included). Every
round runs ``python -m bench --repeats 1`` once per commit, in separate processes, their order
flipped every round, so that drift of this shared machine falls on both. Per case (model,
trace_axes, method): the median over rounds of each commit's median run time, their ratio
after / before, and the noise the run itself shows: the larger of the two commits' spreads,
(max - min) / median over rounds. A case is flagged slower when its ratio exceeds
``1 + --slack`` (default 0.05) beyond that noise.

Writes ``bench/results/before-after-<tag>.json`` and ``.log``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def export(rev: str, into: pathlib.Path) -> pathlib.Path:
    """The tree of ``rev`` (or the working tree for ``"worktree"``) in a folder of ``into``."""
    if rev == "worktree":
        return ROOT
    folder = into / rev
    folder.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def run_suite(tree: pathlib.Path, bench_args: list[str], out: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))  # this tree's ntkc before the installed one
    subprocess.run([sys.executable, "-m", "bench", "--repeats", "1", "--json", str(out),
                    *bench_args], cwd=tree, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def times(report: dict) -> dict:
    """``(model, trace_axes, method) -> median run seconds`` of one suite report."""
    return {(r["model"], str(r["trace_axes"]), r["method"]): r["run_s_median"]
            for r in report["rows"] if "run_s_median" in r and not r.get("summary")}


def compare(rounds: dict, before: str, after: str, slack: float) -> list[dict]:
    rows = []
    for case in sorted(set.intersection(*(set(t) for runs in rounds.values() for t in runs))):
        per = {rev: [t[case] for t in rounds[rev]] for rev in (before, after)}
        med = {rev: statistics.median(v) for rev, v in per.items()}
        noise = max((max(v) - min(v)) / statistics.median(v) for v in per.values())
        ratio = med[after] / med[before]
        rows.append(dict(model=case[0], trace_axes=case[1], method=case[2],
                         before_s=med[before], after_s=med[after], ratio=ratio, noise=noise,
                         slower=ratio > 1 + slack + noise))
    return rows


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the commit measured as before")
    ap.add_argument("--after", default="worktree", help="the commit measured as after "
                    "(default: the working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slack", type=float, default=0.05)
    ap.add_argument("--tag", default="run")
    args = ap.parse_args(argv)
    results = ROOT / "bench" / "results"
    log_lines = []

    def log(line):
        print(line, flush=True)
        log_lines.append(line)

    revs = [args.before, args.after]
    rounds = {rev: [] for rev in revs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        trees = {rev: export(rev, tmp) for rev in revs}
        log(f"bench before/after: {args.before} -> {args.after}, {args.rounds} rounds, "
            f"python -m bench {' '.join(bench_args)}; {platform.machine()}, "
            f"{os.cpu_count()} cores, {datetime.datetime.now():%Y-%m-%d %H:%M}")
        for i in range(args.rounds):
            for rev in (revs if i % 2 == 0 else revs[::-1]):
                log(f"round {i + 1}: {rev} (load {load()})")
                report = run_suite(trees[rev], bench_args, tmp / f"{i}-{rev}.json")
                rounds[rev].append(times(report))
    rows = compare(rounds, args.before, args.after, args.slack)
    log(f"{'model':8}{'trace':>8}{'method':>12}{'before s':>11}{'after s':>11}{'ratio':>8}"
        f"{'noise':>8}")
    for r in rows:
        flag = "  SLOWER" if r["slower"] else ""
        log(f"{r['model']:8}{r['trace_axes']:>8}{r['method']:>12}{r['before_s']:>11.4f}"
            f"{r['after_s']:>11.4f}{r['ratio']:>8.3f}{r['noise']:>8.2f}{flag}")
    slower = [r for r in rows if r["slower"]]
    log(f"{len(slower)} of {len(rows)} cases slower than {1 + args.slack:.2f}x beyond the noise")
    results.mkdir(exist_ok=True)
    (results / f"before-after-{args.tag}.json").write_text(json.dumps(
        dict(before=args.before, after=args.after, rounds=args.rounds, rows=rows), indent=1))
    (results / f"before-after-{args.tag}.log").write_text("\n".join(log_lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
