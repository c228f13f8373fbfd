"""What "at most half of neural-tangents' time" asks of ntkc, case by case, from comparisons
already run (``bench/compare_nt.py``'s JSON files) and this machine's matmul and convolution
rates measured now, on the JAX of the interpreter that runs it (run it with the comparison's).

    .venv-jax092/bin/python bench/nt_rates.py bench/results/compare-nt-paper-*.json [--no-rates]

For each structured row of each file: both programs' XLA FLOPs and GFLOP/s of wall time (median
run), ntkc's time over NT's, and the rate ntkc's program would need to run at for half NT's time,
as GFLOP/s and as a share of the measured rates (both threads). Where the same case, x2 and
trace were compared in several files, the newest file's row is the one shown (files are read in
the order given; later ones replace earlier ones).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.getcwd())  # this checkout's ntkc and bench


def rows(paths: list[str]) -> dict:
    """(case, x2, trace) -> the structured measurements of both libraries, the last file's."""
    found = {}
    for path in paths:
        with open(path) as fh:
            report = json.load(fh)
        for case in report["cases"]:
            nt = next((v["structured"] for k, v in case.items()
                       if k.startswith("nt-") and "structured" in v), None)
            ours = next((v["structured"] for k, v in case.items()
                         if k.startswith("ntkc-") and "structured" in v), None)
            if not nt or not ours or "run_s_median" not in nt or "run_s_median" not in ours:
                continue
            key = (case["model"], "given" if case["x2"] else "None",
                   "(-1,)" if case["trace_axes"] else "()")
            found[key] = {"nt": nt, "ntkc": ours, "file": os.path.basename(path)}
    return found


def table(found: dict, rates: dict | None) -> list[str]:
    head = ["case", "x2", "trace_axes", "NT s", "ntkc s", "ntkc / NT", "NT GFLOP", "ntkc GFLOP",
            "NT GFLOP/s", "ntkc GFLOP/s", "GFLOP/s for 0.5x NT"]
    if rates:
        head += ["% matmul (ntkc, needed)", "% conv (ntkc, needed)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, x2, trace), row in sorted(found.items()):
        nt, ours = row["nt"], row["ntkc"]
        nt_s, our_s = nt["run_s_median"], ours["run_s_median"]
        nt_g, our_g = nt["xla_flops"] / 1e9, ours["xla_flops"] / 1e9
        needed = our_g / (nt_s / 2)
        cells = [model, x2, trace, f"{nt_s:.2f}", f"{our_s:.2f}", f"{our_s / nt_s:.2f}",
                 f"{nt_g:.0f}", f"{our_g:.0f}", f"{nt_g / nt_s:.0f}", f"{our_g / our_s:.0f}",
                 f"{needed:.0f}"]
        if rates:
            for rate in (rates["matmul_gflops"], rates["conv_gflops"]):
                cells.append(f"{100 * our_g / our_s / rate:.0f}, {100 * needed / rate:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="compare_nt.py JSON reports")
    parser.add_argument("--no-rates", action="store_true",
                        help="do not measure the machine's rates (no percentage columns)")
    args = parser.parse_args(argv)
    found = rows(args.files)
    if not found:
        parser.error("no structured row with both libraries' times in the files given")
    rates = None
    if not args.no_rates:
        import jax

        from bench.paper import rates as measure
        rates = measure()
        print(f"JAX {jax.__version__}: matmul {rates['matmul_gflops']:.0f} GFLOP/s, "
              f"3x3 conv {rates['conv_gflops']:.0f} GFLOP/s (both threads, best of 5)\n")
    print("\n".join(table(found, rates)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
