"""What the comparison scripts (``compare_nt.py``, ``compare_torch.py``) share: the source the
workers run, kernel agreement, and table cells. Standard library only (numpy on demand): the
workers import it inside other libraries' virtual environments."""

from __future__ import annotations

import io
import pathlib
import subprocess
import tarfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def export_source(dest: pathlib.Path, required: tuple, watched: tuple, rev: str = "HEAD",
                  bench_rev: str | None = None) -> dict:
    """Copies ``ntkc/`` at git ``rev`` (HEAD) and ``bench/`` at ``bench_rev`` (default: ``rev``)
    to ``dest``: what the workers run, so that uncommitted edits in a shared checkout do not leak
    into the measurement, and several runs can measure one commit's ``ntkc/`` with the newest
    harness. ``required``: the script's own files under ``bench/``, which must be committed."""
    bench_rev = bench_rev or rev
    for path, at in (("ntkc", rev), ("bench", bench_rev)):
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", at, path],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    for name in required:
        if not (dest / "bench" / name).exists():
            raise SystemExit(f"bench/{name} is not committed; commit it or pass --worktree")
    info = source_info(dest, watched, rev)
    if bench_rev != rev:
        info["bench_commit"] = source_info(dest, watched, bench_rev)["commit"]
    return info


def source_info(src: pathlib.Path, watched: tuple, rev: str = "HEAD") -> dict:
    """The commit, whether ``src`` is it or the working tree, and whether the ``watched`` paths
    have uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True,
                              text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", *watched)
    return {"commit": git("rev-parse", rev),
            "source": "git HEAD" if src != ROOT else "working tree",
            "uncommitted_changes_in_worktree": bool(dirty)}


def rel_dev(a_path: pathlib.Path, b_path: pathlib.Path):
    """max|a - b| / max|b| of two saved kernels (None if either is missing, inf if shapes differ)."""
    import numpy as np

    if not (a_path.exists() and b_path.exists()):
        return None
    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) / (float(np.max(np.abs(b))) or 1.0)


def fmt(v, spec):
    """``format(v, spec)``, or a dash of the column's width for None."""
    if v is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return format("-", f">{width}") if width else "-"
    return format(v, spec)


def status(error) -> str:
    """A worker's or method's error as one short cell: ``"ok"``; ``"does not fit: needs X GiB"``
    (refused before running: XLA's memory analysis of the compiled program over the limit, or
    ntkc's planner found no split that fits); ``"out of memory"`` (XLA could not allocate, or the
    process was killed, as the kernel's OOM killer does, with SIGKILL); ``"timed out ..."``;
    else the error's first line."""
    import re

    if not error:
        return "ok"
    text = str(error)
    refused = re.search(r"memory analysis of the compiled program says ([\d.]+) GiB", text)
    if refused:
        return f"does not fit: needs {refused.group(1)} GiB"
    if "PathMemoryError" in text:
        needs = re.search(r"needs about ([\d.e+]+) bytes", text)
        return ("does not fit: needs " + (f"{float(needs.group(1)) / 2**30:.1f} GiB" if needs
                                           else "more than memory_limit") + " (ntkc's planner)")
    if re.search(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|MemoryError|exited with -9\b", text):
        return "out of memory"
    if "timed out" in text:
        return text.strip().splitlines()[0]
    killed = re.search(r"exited with -(\d+)", text)
    if killed:
        return f"killed (signal {killed.group(1)})"
    return text.strip().splitlines()[0][:120] if text.strip() else "failed"


def ratio(a, b):
    return None if a is None or b is None or not b else a / b
