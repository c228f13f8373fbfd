"""Inputs a new user tries: one rule for leaf types and dtypes in every method, Flax variables
passed whole, and clear errors (naming the argument) instead of confusing ones."""

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc.testing import reference_ntk

METHODS = ["auto", "structured", "jacobian", "ntvp"]
R = np.random.default_rng(0)
X = R.standard_normal((4, 3))


def scaled(p, x):
    return jnp.tanh(x @ p["w"]) * p["s"]


# ------------------------------------------------------------ leaf types and dtypes


@pytest.mark.quick
@pytest.mark.parametrize("method", METHODS)
def test_a_python_float_leaf_is_accepted_by_every_method(method):
    params = {"w": R.standard_normal((3, 2)), "s": 2.0}
    got = ntkc.ntk_fn(scaled, vmap_axes=0, method=method)(X, None, params)
    np.testing.assert_allclose(got, reference_ntk(scaled, X, None, params), rtol=1e-10, atol=1e-12)


def test_a_python_float_leaf_in_gram():
    params = {"w": R.standard_normal((3, 2)), "s": 2.0}
    got = ntkc.gram(scaled, params, X, batch_size=2, progress=False)
    np.testing.assert_allclose(got, reference_ntk(scaled, X, None, params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_the_kernel_dtype_does_not_depend_on_the_method(method):
    params = {"w": jnp.asarray(R.standard_normal((3, 2)), jnp.float16), "s": jnp.float16(2)}
    x = X.astype(np.float32)  # f's output is float32: promoted with params' float16
    got = ntkc.ntk_fn(scaled, vmap_axes=0, method=method)(x, None, params)
    assert got.dtype == jnp.float32
    want = reference_ntk(scaled, x, None, params)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
    by_leaf = ntkc.ntk_fn(scaled, vmap_axes=0, method=method, by_param=True)(x, None, params)
    assert {k.dtype for k in jax.tree.leaves(by_leaf)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("method", METHODS)
def test_one_byte_float_params_give_the_kernel(method):
    """float8 leaves (itemsize 1): every method runs and returns the kernel in f's dtype."""
    params = {"w": jnp.asarray(R.standard_normal((3, 2)), jnp.float8_e4m3fn),
              "s": jnp.float8_e4m3fn(2)}
    x = jnp.asarray(X, jnp.float8_e4m3fn)
    got = ntkc.ntk_fn(scaled, vmap_axes=0, method=method)(x, None, params)
    assert got.dtype == jnp.float8_e4m3fn
    want = reference_ntk(scaled, x, None, params)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.15, atol=0.3)


@pytest.mark.parametrize("method", METHODS)
def test_an_ensemble_of_params_under_vmap(method):
    """A user's vmap over a stack of parameter sets (an ensemble's kernels) gives each set's."""
    params = {"w": R.standard_normal((3, 2)), "s": 2.0}
    stack = {"w": np.stack([params["w"], -0.5 * params["w"]]), "s": np.array([2.0, 3.0])}
    kfn = ntkc.ntk_fn(scaled, vmap_axes=0, method=method)
    got = jax.vmap(lambda p: kfn(X, X[:3] + 1, p))(stack)
    for i in range(2):
        member = {"w": stack["w"][i], "s": stack["s"][i]}
        np.testing.assert_allclose(got[i], reference_ntk(scaled, X, X[:3] + 1, member),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_complex_params_and_outputs_are_refused_with_the_recipe(method):
    params = {"w": (R.standard_normal((3, 2)) + 1j * R.standard_normal((3, 2)))}
    with pytest.raises(TypeError, match=r"params\['w'\] has dtype complex128.*'re'.*'im'"):
        ntkc.ntk_fn(scaled, method=method)(X, None, {**params, "s": 1.0})
    real = {"w": R.standard_normal((3, 2))}
    complex_out = lambda p, x: jnp.exp(1j * (x @ p["w"]))
    with pytest.raises(TypeError, match=r"returns a leaf of dtype complex128.*y.real, y.imag"):
        ntkc.ntk_fn(complex_out, method=method)(X, None, real)


def test_the_complex_recipe_gives_the_kernel_of_the_real_map():
    """A complex layer as real leaves (Re w, Im w) and real outputs (Re y, Im y)."""
    params = {"re": R.standard_normal((3, 2)), "im": R.standard_normal((3, 2))}

    def f(p, x):
        y = jnp.tanh(x @ (p["re"] + 1j * p["im"]))
        return jnp.stack([y.real, y.imag], -1)

    want = reference_ntk(f, X, None, params, trace_axes=())
    for method in ["jacobian", "ntvp", "auto"]:
        with warnings.catch_warnings():  # auto says why it does not plan structured
            warnings.simplefilter("ignore")
            got = ntkc.ntk_fn(f, trace_axes=(), vmap_axes=0, method=method)(X, None, params)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    # complex values inside the linear map: refused by structured, never a wrong kernel
    with pytest.raises(NotImplementedError, match="complex value.*method='jacobian' or 'ntvp'"):
        ntkc.ntk_fn(f, trace_axes=(), vmap_axes=0, method="structured")(X, None, params)


# ------------------------------------------------------------------- Flax variables


def _flax_model():
    import flax.linen as nn

    class BatchNormNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True)(nn.Dense(4)(x))
            return nn.Dense(2)(nn.relu(x))

    model = BatchNormNet()
    variables = model.init(jax.random.PRNGKey(0), X)
    # running statistics that are not the initial zeros and ones
    variables = {**variables, "batch_stats": jax.tree.map(
        lambda s: s + 0.3 * jnp.asarray(R.standard_normal(s.shape)), variables["batch_stats"])}
    return model, variables


def test_flax_variables_passed_whole_warn_naming_the_collections():
    model, variables = _flax_model()
    with pytest.warns(ntkc.FlaxCollectionsWarning, match=r"\['batch_stats'\].*variables\['params'\]"):
        whole = ntkc.ntk_fn(model.apply, vmap_axes=0)(X, None, variables)
    # the right way: only "params" differentiable, the statistics closed over
    f = lambda p, x: model.apply({**variables, "params": p}, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = ntkc.ntk_fn(f, vmap_axes=0)(X, None, variables["params"])
    np.testing.assert_allclose(right, reference_ntk(f, X, None, variables["params"]),
                               rtol=1e-6, atol=1e-8)
    assert not np.allclose(whole, right)  # the warning is about a real difference


def test_the_flax_warning_can_be_silenced():
    model, variables = _flax_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=ntkc.FlaxCollectionsWarning)
        ntkc.ntk_fn(model.apply, vmap_axes=0, method="jacobian")(X, None, variables)


def test_plain_params_dicts_do_not_warn():
    params = {"w": R.standard_normal((3, 2)), "s": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ntkc.ntk_fn(scaled, method="jacobian")(X, None, params)
        ntkc.ntk_fn(lambda p, x: scaled(p["params"], x), method="jacobian")(
            X, None, {"params": params})


# ------------------------------------------------------------------- clear errors

P = {"w": R.standard_normal((3, 2))}
f = lambda p, x: jnp.tanh(x @ p["w"])

ERRORS = {
    "a string leaf": (lambda: ntkc.ntk_fn(f)(X, None, {**P, "name": "mlp"}),
                      TypeError, r"params\['name'\] is 'mlp' of type str"),
    "kwargs not a mapping in plan": (lambda: ntkc.plan(f, X, None, P, kwargs=[1, 2]),
                                     TypeError, "kwargs must be a mapping.*got list"),
    "kwargs not a mapping in compile": (lambda: ntkc.compile(f, X, None, P, kwargs=(1,)),
                                        TypeError, "kwargs must be a mapping.*got tuple"),
    "gram on an empty dataset": (lambda: ntkc.gram(f, P, np.zeros((0, 3)), progress=False),
                                 ValueError, r"X1 holds no examples"),
    "gram on an empty X2": (lambda: ntkc.gram(f, P, X, np.zeros((0, 3)), progress=False),
                            ValueError, r"X2 holds no examples"),
    "memory_limit=True": (lambda: ntkc.ntk_fn(f, memory_limit=True),
                          ValueError, r"memory_limit must be a positive int.*True"),
    "memory_limit=True in gram": (lambda: ntkc.gram(f, P, X, memory_limit=True, progress=False),
                                  ValueError, r"memory_limit must be a positive int.*True"),
    "cache_bytes=False": (lambda: ntkc.gram(f, P, X, cache_bytes=False, progress=False),
                          ValueError, r"cache_bytes must be a non-negative int.*False"),
    "batch_size=True": (lambda: ntkc.gram(f, P, X, batch_size=True, progress=False),
                        ValueError, r"batch_size must be a positive int, got True"),
    "f returns None": (lambda: ntkc.ntk_fn(lambda p, x: None)(X, None, P),
                       ValueError, r"f\(params, x1\) returned None, with no array in it"),
    "a list as x1": (lambda: ntkc.ntk_fn(f, vmap_axes=0)([[1., 2., 3.]], None, P),
                     TypeError, r"x1 is a list of Python numbers; pass an array"),
    "a list as x2": (lambda: ntkc.ntk_fn(f)(X, [[1., 2., 3.]], P),
                     TypeError, r"x2 is a list of Python numbers"),
}


@pytest.mark.quick
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_clear_errors(case):
    call, kind, match = ERRORS[case]
    with pytest.raises(kind, match=match):
        call()


def test_a_folder_named_ntkc_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    """A clone of the repository (or any folder) named ntkc where Python starts: the installed
    package must still be the one imported (pip install -e . in setuptools' compat mode, or a
    plain install; the default editable finder loses to the folder)."""
    (tmp_path / "ntkc").mkdir()
    (tmp_path / "ntkc" / "README.md").write_text("a source folder, not a package")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", "import ntkc; print(ntkc.ntk_fn.__module__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ntkc._api", (
        "import ntkc picked the folder: reinstall with "
        "pip install -e . --config-settings editable_mode=compat\n" + run.stderr)


def test_bench_help_describes_every_flag():
    from bench import suite
    parser_help = subprocess.run([sys.executable, "-m", "ntkc", "bench", "--help"],
                                 capture_output=True, text=True, cwd=os.path.dirname(
                                     os.path.dirname(os.path.abspath(suite.__file__))))
    text = parser_help.stdout
    assert parser_help.returncode == 0, parser_help.stderr
    flags = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
    assert len(flags) >= 8
    for line in text.split("options:")[1].split("\n  -")[1:]:
        words = line.split()
        assert len(words) > 2 or "help" in line, f"undocumented flag: -{line.strip()}"
