"""The ``ntkc`` command: ``ntkc demo`` on a tiny size, help and argument errors."""

import contextlib
import io
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc import cli


@pytest.fixture(scope="module")
def demo_output():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["demo", "--n", "2", "--size", "8", "--seed", "1"])
    return status, out.getvalue()


def table_rows(text):
    """``{method: row tokens}`` from the lines between the table's dashed rule and the first
    blank line (the plan follows)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line) == {"-"})
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()[1:]
    return rows


def test_demo_prints_the_plan(demo_output):
    text = demo_output[1]
    assert "Plan: method=" in text
    assert "['stem']['w']" in text and "conv_general_dilated" in text


def test_demo_exits_0_and_names_its_reference(demo_output):
    status, text = demo_output
    assert status == 0, text
    assert "reference: float64" in text
    assert "x (2, 8, 8, 3) float32" in text


def test_demo_has_a_row_per_method(demo_output):
    rows = table_rows(demo_output[1])
    assert list(rows) == list(ntkc.METHODS)


@pytest.mark.parametrize("method", ntkc.METHODS)
def test_demo_deviation_is_small(demo_output, method):
    row = table_rows(demo_output[1])[method]
    assert row != ["not available"], f"method={method!r} is not available"
    compile_s, run_s, max_dev, rel_dev = map(float, row)
    assert compile_s > -run_s and run_s > 0
    assert rel_dev < 1e-4, f"{method}: max dev {max_dev}, rel dev {rel_dev} (float32 vs float64)"


def test_demo_reference_matches_testing_reference():
    """The demo's cheap per-example reference equals ntkc.testing.reference_ntk."""
    f, params = cli.split_strides(cli.init_resnet(np.random.default_rng(0), width=4))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 6, 6, 3)), jnp.float32)
    np.testing.assert_allclose(
        cli.reference_ntk(f, x, params),
        ntkc.testing.reference_ntk(f, x, None, params, trace_axes=(-1,)),
        rtol=1e-10, atol=1e-10,
    )


def test_no_command_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    assert "usage: ntkc" in capsys.readouterr().err


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--n", "0"], ["demo", "--size", "x"]])
def test_bad_demo_option_is_an_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_python_m_ntkc_demo_help():
    result = subprocess.run([sys.executable, "-m", "ntkc", "demo", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: ntkc demo" in result.stdout
    for option in ("--n", "--seed", "--size"):
        assert option in result.stdout


def test_python_m_ntkc_without_command_exits_2():
    result = subprocess.run([sys.executable, "-m", "ntkc"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "usage: ntkc" in result.stderr
