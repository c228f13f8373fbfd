"""The code blocks of a Markdown file, run as written (tests/test_docs.py, tests/test_custom_rule.py).

A block fenced ```python runs; one fenced ```python no-run is shown to readers but not run (each
file's count of these is asserted by tests/test_docs.py); every other fence (```bash, ```, ...)
is text. The runnable blocks of one file run in order in one namespace, compiled with the
Markdown file as their file name and its line numbers, so a traceback points at the doc's line.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

FENCE = re.compile(r"^```(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: pathlib.Path
    index: int  # among the file's ```python blocks (run or not), from 0
    line: int  # the 1-based line of the block's first code line
    info: str  # the fence's info string: "python", "python no-run", "bash", ...
    source: str

    @property
    def runs(self) -> bool:
        return self.info == "python"

    @property
    def python(self) -> bool:
        return self.info.split()[:1] == ["python"]

    def where(self) -> str:
        last = self.line + self.source.count("\n") - 1
        return f"{self.path.name} python block {self.index} (lines {self.line}-{last})"


def blocks(path) -> list[Block]:
    """Every fenced block of ``path``, in order; an unclosed fence raises ValueError."""
    path = pathlib.Path(path)
    out, info, start, body = [], None, 0, []
    index = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(line)
        if info is None:
            if match:
                info, start, body = match.group(1).strip(), number + 1, []
        elif match and not match.group(1).strip():
            block = Block(path, index, start, info, "".join(l + "\n" for l in body))
            if block.python:
                index += 1
            out.append(block)
            info = None
        else:
            body.append(line)
    if info is not None:
        raise ValueError(f"{path.name}: the ```{info} fence opened at line {start - 1} is not closed")
    return out


def python_blocks(path) -> list[Block]:
    return [b for b in blocks(path) if b.python]


def run(path, namespace: dict | None = None) -> dict:
    """Runs the ```python blocks of ``path`` in order in ``namespace`` (a fresh one by default);
    returns it. A failing block raises AssertionError naming the block and its lines, chained to
    the error (whose traceback shows the Markdown file's line)."""
    namespace = {"__name__": "__doc_" + pathlib.Path(path).stem} if namespace is None else namespace
    for block in python_blocks(path):
        if not block.runs:
            continue
        code = compile("\n" * (block.line - 1) + block.source, str(block.path), "exec")
        try:
            exec(code, namespace)
        except Exception as err:
            raise AssertionError(f"{block.where()} failed: {type(err).__name__}: {err}") from err
    return namespace
