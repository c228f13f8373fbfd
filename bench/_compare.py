"""What the comparison scripts (``compare_nt.py``, ``compare_torch.py``) share: the source the
workers run, kernel agreement, and table cells. Standard library only (numpy on demand): the
workers import it inside other libraries' virtual environments."""

from __future__ import annotations

import io
import pathlib
import subprocess
import tarfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def export_source(dest: pathlib.Path, required: tuple, watched: tuple, rev: str = "HEAD") -> dict:
    """Copies ``ntkc/`` and ``bench/`` at git ``rev`` (HEAD) to ``dest``: what the workers run, so
    that uncommitted edits in a shared checkout do not leak into the measurement. ``required``: the
    script's own files under ``bench/``, which must be committed."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "ntkc",
                              "bench"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    for name in required:
        if not (dest / "bench" / name).exists():
            raise SystemExit(f"bench/{name} is not committed; commit it or pass --worktree")
    return source_info(dest, watched, rev)


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


def ratio(a, b):
    return None if a is None or b is None or not b else a / b
