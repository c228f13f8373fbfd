"""The README and docs/*.md run as written: every ```python block of a file, in order, in one fresh
namespace per file (tests/docblocks.py). A failure names the file, the block and its lines.

Blocks that are not to be run are fenced otherwise (```bash for shell commands); a ```python
no-run block would be shown but not run, and NO_RUN counts them per file, so none is skipped
silently. docs/extending.md is run by tests/test_custom_rule.py (its fixture runs the blocks with
the same helper and checks what they print), not here a second time.
"""

import os
import pathlib
import subprocess
import sys

import pytest

import docblocks

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
RUN_BY = {"docs/extending.md": "tests/test_custom_rule.py"}  # doc -> the test file that runs it
NO_RUN = {}  # doc -> its number of ```python no-run blocks; every other doc has none
HERE = [d for d in DOCS if d not in RUN_BY]


@pytest.mark.quick
def test_every_doc_is_run_once_and_no_block_is_skipped_silently():
    assert "README.md" in HERE and "docs/rules.md" in HERE
    for doc, runner in RUN_BY.items():
        assert doc in DOCS, f"{doc} is gone: drop it from RUN_BY"
        source = (ROOT / runner).read_text()
        assert "docblocks.run(" in source and pathlib.Path(doc).name in source, runner
    for doc in DOCS:
        blocks = docblocks.python_blocks(ROOT / doc)
        infos = {b.info for b in blocks}
        assert infos <= {"python", "python no-run"}, f"{doc}: unknown fences {infos}"
        skipped = [b.where() for b in blocks if not b.runs]
        assert len(skipped) == NO_RUN.get(doc, 0), (doc, skipped)


@pytest.mark.parametrize("doc", [pytest.param(d, marks=pytest.mark.quick) if d == "docs/rules.md"
                                 else d for d in HERE])
def test_doc_runs_as_written(doc, tmp_path, monkeypatch):
    """Under the suite's config (x64, rank promotion raises); files the blocks write go to a
    temporary directory."""
    monkeypatch.chdir(tmp_path)
    namespace = docblocks.run(ROOT / doc)
    assert len(namespace) > 1


def test_readme_runs_with_jax_defaults(tmp_path):
    """README.md again, in a fresh process with JAX's default config (float32, rank promotion
    allowed): what a reader who copies the blocks gets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    code = ("import sys, jax; sys.path.insert(0, sys.argv[1]); import docblocks; "
            "assert not jax.config.jax_enable_x64; "
            "ns = docblocks.run(sys.argv[2]); print('dtype', ns['theta'].dtype)")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT / "README.md")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dtype float32" in done.stdout, done.stdout
