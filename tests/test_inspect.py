"""``ntkc inspect MODULE:FACTORY``: the plan table, --dot, --hlo, option parsing, and one-line
errors (exit status 2) for a module or factory that cannot be found or used."""

import argparse
import itertools
import subprocess
import sys
import textwrap

import pytest

from ntkc import cli

MODEL = """
import jax.numpy as jnp
import numpy as np


def f(params, x):
    # explicit broadcasting: the tests run with jax_numpy_rank_promotion="raise"
    h = jnp.tanh(x @ params["w"] + params["b"][None, :])
    return h @ params["v"]


def _params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32),
            "b": jnp.zeros((5,), jnp.float32),
            "v": jnp.asarray(rng.standard_normal((5, 2)), jnp.float32)}


def make():
    return f, _params(), jnp.ones((4, 3), jnp.float32)


def make_pair():
    return f, _params(), jnp.ones((4, 3), jnp.float32), jnp.zeros((2, 3), jnp.float32)


class Models:
    @staticmethod
    def make():
        return make()
"""

_COUNTER = itertools.count()


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Writes ``source`` to a fresh importable module; returns its name."""
    names = []

    def write(source=MODEL):
        name = f"inspect_model_{next(_COUNTER)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in names:
        sys.modules.pop(name, None)


def run(capsys, *argv):
    status = cli.main(["inspect", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def plan_rows(text):
    """Rows of the plan table: the lines after the dashed rule, up to the summary line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "})
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("terms:"):
            break
        rows.append(line)
    return rows


# ----------------------------------------------------------------------------- the plan


def test_prints_the_plan_with_a_row_per_param_leaf(capsys, module):
    name = module()
    status, out, err = run(capsys, f"{name}:make", "--vmap-axes", "0")
    assert status == 0, err
    assert f"ntkc inspect {name}:make: x1 (4, 3) float32, x2 = x1; 3 param leaves" in out
    assert "Plan: method=" in out and "kernels (4, 4)" in out
    rows = plan_rows(out)
    assert len(rows) == 3
    for leaf, row in zip(("['b']", "['v']", "['w']"), rows):
        assert leaf in row
    assert any("dot_general x dot_general" in row for row in rows)
    assert any("broadcast_in_dim" in row for row in rows)


def test_factory_with_x2(capsys, module):
    name = module()
    status, out, err = run(capsys, f"{name}:make_pair", "--trace-axes", "none")
    assert status == 0, err
    assert "x2 (2, 3) float32" in out
    assert "kernels (4, 2, 2, 2)" in out


def test_options_reach_the_plan(capsys, module):
    name = module()
    status, out, err = run(capsys, f"{name}:make", "--method", "jacobian", "--trace-axes", "",
                           "--diagonal-axes", "0", "--vmap-axes", "none")
    assert status == 0, err
    assert "trace_axes=(), diagonal_axes=(0,), vmap_axes=None" in out
    assert "Plan: method=jacobian, kernels (4, 2, 2)" in out
    status, out, err = run(capsys, f"{name}:make", "--trace-axes=-1,0", "--method", "structured")
    assert status == 0, err
    assert "Plan: method=structured, kernels ()" in out


def test_dotted_factory_and_file_path(capsys, module, tmp_path):
    name = module()
    status, out, err = run(capsys, f"{name}:Models.make")
    assert status == 0, err
    assert len(plan_rows(out)) == 3
    status, out, err = run(capsys, f"{tmp_path / name}.py:make")
    assert status == 0, err
    assert len(plan_rows(out)) == 3


def test_dot_writes_graphviz(capsys, module, tmp_path):
    name = module()
    path = tmp_path / "plan.dot"
    status, out, err = run(capsys, f"{name}:make", "--dot", str(path))
    assert status == 0, err
    text = path.read_text()
    assert text.startswith("digraph")
    assert "param ['w']" in text and text.rstrip().endswith("}")
    assert f"wrote the plan's graph (DOT) to {path}" in out
    status, out, err = run(capsys, f"{name}:make", "--dot", "-")
    assert status == 0, err
    assert "\ndigraph" in out


def test_hlo_prints_stablehlo(capsys, module):
    name = module()
    status, out, err = run(capsys, f"{name}:make", "--hlo", "--vmap-axes", "0",
                           "--method", "structured")
    assert status == 0, err
    assert "StableHLO of the kernel program" in out
    assert "func.func" in out and "stablehlo." in out
    assert "tensor<4x4xf32>" in out  # the kernel's type


def test_python_m_ntkc_inspect_imports_from_the_current_directory(tmp_path):
    (tmp_path / "cwd_model.py").write_text(MODEL)
    result = subprocess.run([sys.executable, "-m", "ntkc", "inspect", "cwd_model:make"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(plan_rows(result.stdout)) == 3


# ----------------------------------------------------------------------------- option parsing


@pytest.mark.parametrize("text, axes", [("-1", (-1,)), ("0,2", (0, 2)), (" 1 , -1 ", (1, -1)),
                                        ("none", ()), ("None", ()), ("", ()), ("(0,1)", (0, 1))])
def test_axes_list(text, axes):
    assert cli._axes_list(text) == axes


@pytest.mark.parametrize("text, axis", [("0", 0), ("-1", -1), ("none", None), ("", None)])
def test_vmap_axes(text, axis):
    assert cli._vmap_axes(text) == axis


@pytest.mark.parametrize("parse, text", [(cli._axes_list, "x"), (cli._axes_list, "1.5"),
                                         (cli._vmap_axes, "0,1"), (cli._vmap_axes, "a")])
def test_bad_axes_are_argument_errors(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


@pytest.mark.parametrize("argv, message", [
    (["--trace-axes", "x"], "argument --trace-axes: expected comma-separated ints"),
    (["--vmap-axes", "0,1"], "argument --vmap-axes: expected an int or 'none'"),
    (["--method", "fast"], "argument --method: invalid choice: 'fast'"),
])
def test_bad_option_exits_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["inspect", "m:f", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["inspect", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("MODULE:FACTORY", "--method", "--trace-axes", "--diagonal-axes",
                   "--vmap-axes", "--strict", "--dot", "--hlo"):
        assert option in out


# ----------------------------------------------------------------------------- errors


def assert_one_line_error(capsys, argv, status, *fragments):
    got, out, err = run(capsys, *argv)
    assert got == status, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ntkc inspect: error: "), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_module(capsys, module):
    assert_one_line_error(capsys, ["no_such_module_xyz:make"], 2,
                          "cannot import module 'no_such_module_xyz'", "no module named")


def test_missing_file(capsys, tmp_path):
    assert_one_line_error(capsys, [f"{tmp_path}/absent.py:make"], 2, "no such file")


def test_module_that_fails_to_import(capsys, module):
    name = module("import no_such_dependency_xyz\n")
    assert_one_line_error(capsys, [f"{name}:make"], 2, f"cannot import module {name!r}",
                          "ModuleNotFoundError", "no_such_dependency_xyz")
    name = module("raise RuntimeError('broken\\nmodule')\n")
    assert_one_line_error(capsys, [f"{name}:make"], 2, "RuntimeError: broken module")


def test_missing_factory(capsys, module):
    name = module()
    assert_one_line_error(capsys, [f"{name}:nope"], 2, f"module {name!r} has no attribute 'nope'")
    assert_one_line_error(capsys, [f"{name}:Models.nope"], 2, "has no attribute 'Models.nope'")


@pytest.mark.parametrize("spec", ["make", ":make", "mod:", ""])
def test_malformed_spec(capsys, spec):
    assert_one_line_error(capsys, [spec], 2, "expected MODULE:FACTORY")


def test_factory_not_callable(capsys, module):
    name = module(MODEL + "\nconstant = 3\n")
    assert_one_line_error(capsys, [f"{name}:constant"], 2, "is 3 (of type int), not a callable factory")


def test_factory_that_raises(capsys, module):
    name = module("def make():\n    raise ValueError('no data\\nhere')\n")
    assert_one_line_error(capsys, [f"{name}:make"], 2,
                          f"{name}:make() raised ValueError: no data here")


@pytest.mark.parametrize("body, fragment", [
    ("return 3", "returned 3 (of type int); expected a tuple (f, params, x1)"),
    ("return (f, {})", "returned 2 values"),
    ("return (f, {}, 1, 2, 3)", "returned 5 values"),
    ("return ('f', {}, 1)", "returned 'f' (of type str) as f, which is not callable"),
])
def test_factory_returns_the_wrong_thing(capsys, module, body, fragment):
    name = module(f"def f(p, x):\n    return x\n\ndef make():\n    {body}\n")
    assert_one_line_error(capsys, [f"{name}:make"], 2, fragment)


def test_plan_failure_is_one_line_with_status_1(capsys, module):
    # f rejects x1 (a shape mismatch): the work fails, not the command line
    name = module(MODEL + "\ndef bad_x():\n    return f, _params(), jnp.ones((4, 7), jnp.float32)\n")
    assert_one_line_error(capsys, [f"{name}:bad_x"], 1, "ntkc.plan failed: ValueError")
