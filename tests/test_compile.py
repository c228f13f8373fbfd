"""ntkc.compile and ntkc.load: ahead-of-time kernels from arrays or ShapeDtypeStructs, the plan
and cost side by side, StableHLO text, save/load through jax.export (in a fresh process), and
clear errors for wrong inputs and bad files."""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkc
from ntkc import _compile
from ntkc.testing import reference_ntk

import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


@functools.cache
def reference(name):
    f, params, x1, x2 = models.MODELS[name]()
    return reference_ntk(f, x1, x2, params)


# Every (model, vmap_axes, method). The source alternates so that each model, each vmap_axes and
# each method is compiled from arrays and from ShapeDtypeStructs (compile abstracts arrays first,
# so both take one path); one compilation per case keeps the file fast on shared CPUs.
GRID = [(m, v, meth, "arrays" if (v is None) == (meth == "structured") else "abstract")
        for m in ("mlp", "cnn") for v in (None, 0) for meth in ("structured", "jacobian")]


@pytest.mark.parametrize(
    "name,vmap_axes,method,source",
    [pytest.param(*c, marks=[pytest.mark.quick] if c[:3] == ("mlp", 0, "structured") else [])
     for c in GRID])
def test_kernel_matches_ntk_fn_and_reference(name, vmap_axes, method, source):
    f, params, x1, x2 = models.MODELS[name]()
    options = dict(vmap_axes=vmap_axes, method=method)
    expected = ntkc.ntk_fn(f, **options)(x1, x2, params)
    np.testing.assert_allclose(expected, reference(name), rtol=1e-10, atol=1e-12)
    inputs = (x1, x2, params) if source == "arrays" else map(abstract, (x1, x2, params))
    compiled = ntkc.compile(f, *inputs, **options)
    assert compiled.method == method
    np.testing.assert_allclose(compiled(x1, x2, params), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.quick
def test_plan_cost_and_text():
    f, params, x1, x2 = models.mlp()
    compiled = ntkc.compile(f, abstract(x1), None, abstract(params), vmap_axes=0)
    assert isinstance(compiled.plan, ntkc.Plan)
    assert compiled.plan.kernel_shapes == ((3, 3),)
    assert compiled.plan.method == compiled.method  # auto resolved the same way
    cost = compiled.cost
    assert isinstance(cost, _compile.CompiledCost)
    assert cost.estimate == compiled.plan.cost and cost.estimate_flops > 0
    assert cost.xla_flops is not None and cost.xla_flops > 0
    assert "ntkc" in repr(cost) and "XLA" in repr(cost)
    text = compiled.as_text()
    assert "stablehlo" in text or "func.func" in text
    np.testing.assert_allclose(compiled(x1, None, params), ntkc.ntk_fn(f, vmap_axes=0)(x1, None, params),
                               rtol=1e-12, atol=1e-12)
    assert "Compiled(" in repr(compiled)


def test_normalize_cost_analysis():
    norm = _compile._normalize_cost_analysis
    assert norm(None) == {}
    assert norm({"flops": 3.0, "name": "x", "ok": True}) == {"flops": 3.0}
    assert norm([{"flops": 1.0}, {"flops": 2.0, "bytes accessed": 5}]) == {
        "flops": 3.0, "bytes accessed": 5.0}


@pytest.mark.quick
def test_kwargs_static_and_baked_arrays():
    f, params, x1, x2 = models.mlp_kwargs()
    key = jax.random.PRNGKey(3)
    kw = {"scale": 2.0, "train": True, "rng": key}
    expected = ntkc.ntk_fn(f, vmap_axes=0, method="structured")(x1, x2, params, **kw)
    compiled = ntkc.compile(f, abstract(x1), abstract(x2), abstract(params), vmap_axes=0,
                            method="structured", kwargs=kw)
    np.testing.assert_allclose(compiled(x1, x2, params), expected, rtol=1e-12, atol=1e-12)
    # a pair of values per side with x2=None: the program takes x1 for x2
    kw = {"scale": (1.0, 2.0)}
    expected = ntkc.ntk_fn(f, method="jacobian")(x1, None, params, **kw)
    compiled = ntkc.compile(f, x1, None, params, method="jacobian", kwargs=kw)
    np.testing.assert_allclose(compiled(x1, None, params), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match=r"kwargs\['rng'\].*ShapeDtypeStruct"):
        ntkc.compile(f, x1, None, params, kwargs={"rng": abstract(key)})


@pytest.mark.quick
def test_compiled_rejects_other_inputs():
    f, params, x1, x2 = models.mlp()
    compiled = ntkc.compile(f, x1, x2, params, method="jacobian")
    check_input_errors(compiled, params, x1, x2)


def check_input_errors(program, params, x1, x2):
    with pytest.raises(ValueError, match=r"x1: .*shape \(3, 4\) and dtype float64, got shape "
                                         r"\(2, 4\) and dtype float64"):
        program(x1[:2], x2, params)
    with pytest.raises(ValueError, match=r"x2: .*dtype float64, got .*dtype float32"):
        program(x1, x2.astype(jnp.float32), params)
    bad = {**params, "w2": params["w2"].astype(jnp.float32)}
    with pytest.raises(ValueError, match=r"params\['w2'\]: .*\(8, 8\) and dtype float64, got "
                                         r"shape \(8, 8\) and dtype float32"):
        program(x1, x2, bad)
    with pytest.raises(ValueError, match=r"params: .*structure"):
        program(x1, x2, {k: v for k, v in params.items() if k != "b3"})
    with pytest.raises(ValueError, match=r"x2 is None"):
        program(x1, None, params)


# ----------------------------------------------------------------------------- save and load

LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import ntkc

    d = sys.argv[1]
    program = ntkc.load(d + "/kernel.ntkc")
    params = dict(np.load(d + "/params.npz"))
    out = program(np.load(d + "/x1.npy"), np.load(d + "/x2.npy"), params)
    np.save(d + "/out.npy", np.asarray(out))
""")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The cnn's structured kernel (vmap_axes=0), compiled from ShapeDtypeStructs and saved."""
    f, params, x1, x2 = models.cnn()
    compiled = ntkc.compile(f, abstract(x1), abstract(x2), abstract(params), vmap_axes=0,
                            method="structured")
    path = tmp_path_factory.mktemp("compiled") / "kernel.ntkc"
    assert compiled.save(path) == os.fspath(path)
    return compiled, path


def test_save_load_in_a_fresh_process(saved):
    compiled, path = saved
    f, params, x1, x2 = models.cnn()
    d = path.parent
    np.save(d / "x1.npy", np.asarray(x1))
    np.save(d / "x2.npy", np.asarray(x2))
    np.savez(d / "params.npz", **{k: np.asarray(v) for k, v in params.items()})
    env = dict(os.environ, JAX_ENABLE_X64="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(d)], env=env, cwd=d,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = compiled(x1, x2, params)
    np.testing.assert_allclose(np.load(d / "out.npy"), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(expected, reference("cnn"), rtol=1e-10, atol=1e-12)


def test_loaded_metadata_and_errors(saved, tmp_path):
    compiled, path = saved
    loaded = ntkc.load(path)
    assert loaded.method == "structured"
    meta = loaded.metadata
    assert meta["ntkc_version"] == ntkc.__version__ and meta["x64"] is True
    assert meta["options"]["vmap_axes"] == "0"
    assert meta["inputs"]["params"]["leaves"][0] == {"name": "params['b']", "shape": [3],
                                                     "dtype": "float64"}
    assert meta["outputs"]["leaves"][0]["shape"] == [3, 2]
    assert "Loaded(" in repr(loaded)
    f, params, x1, x2 = models.cnn()
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match=r"64-bit dtypes.*JAX_ENABLE_X64=1"):
            loaded(x1, x2, params)
    finally:
        jax.config.update("jax_enable_x64", True)
    # the mlp through a loaded program: the same input checks as Compiled
    f, params, x1, x2 = models.mlp()
    program = ntkc.compile(f, x1, x2, params, method="jacobian")
    check_input_errors(ntkc.load(program.save(tmp_path / "mlp.ntkc")), params, x1, x2)


def test_load_rebuilds_pytrees(tmp_path):
    """A dict output and an x2=None program, loaded in process."""
    f, params, x1, _ = models.pytree_output()
    compiled = ntkc.compile(f, x1, None, params, vmap_axes=0, method="jacobian")
    loaded = ntkc.load(compiled.save(tmp_path / "tree.ntkc"))
    out, expected = loaded(x1, None, params), compiled(x1, None, params)
    assert isinstance(out, dict) and set(out) == {"logits", "grid"}
    for k in out:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"x2: .*compiled with x2=None"):
        loaded(x1, x1, params)


def test_tree_encoding():
    tree = {"b": [1, (2, None)], "a": {"z": 3, "y": ()}}
    code = _compile._encode_tree(tree)
    leaves = jax.tree.leaves(tree)
    assert json.loads(json.dumps(code)) == code
    assert _compile._decode_tree(code, leaves) == tree
    assert _compile._encode_tree({1: 1.0, 0: 2.0}) is not None
    Pair = collections.namedtuple("Pair", "a b")
    assert _compile._encode_tree(Pair(1, 2)) is None
    assert _compile._encode_tree(collections.OrderedDict(a=1)) is None
    assert _compile._encode_tree({"a": 1, 0: 2}) is None  # unsortable keys


# ----------------------------------------------------------------------------- bad files


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def with_header(data: bytes, edit) -> bytes:
    """``data`` with its JSON header replaced by ``edit(header)``; the payload kept."""
    _, version, n = _compile._PREFIX.unpack_from(data)
    start = _compile._PREFIX.size
    header = json.loads(data[start : start + n])
    payload = data[start + n :]
    header, payload = edit(header, payload)
    head = json.dumps(header).encode()
    return _compile._PREFIX.pack(_compile.MAGIC, version, len(head)) + head + payload


def test_bad_files(saved, tmp_path):
    _, path = saved
    good = path.read_bytes()
    prefix = _compile._PREFIX.size

    def bad_payload(header, payload):
        garbage = b"not a flatbuffer" * 4
        return {**header, "payload_bytes": len(garbage),
                "payload_sha256": hashlib.sha256(garbage).hexdigest()}, garbage

    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(4.0))
    flipped = bytearray(good)
    flipped[-100] ^= 0xFF
    head = bytearray(good)
    head[prefix] = ord("#")  # the header's opening brace
    cases = {
        "empty": (b"", "not an ntkc"),
        "random": (np.random.default_rng(0).bytes(256), "not an ntkc"),
        "npy": (npy.read_bytes(), "not an ntkc"),
        "short prefix": (good[:12], "truncated"),
        "short header": (good[: prefix + 10], "truncated"),
        "short payload": (good[: len(good) // 2], "truncated"),
        "trailing": (good + b"\0", "trailing bytes"),
        "flipped payload": (bytes(flipped), "corrupted"),
        "bad header": (bytes(head), "bad ntkc file header"),
        "missing key": (with_header(good, lambda h, p: ({"format": 1}, p)), "bad ntkc file header"),
        "bad payload": (with_header(good, bad_payload), "cannot deserialize"),
        "newer format": (good[:8] + struct.pack("<I", 99) + good[12:], "format 99"),
    }
    for name, (data, message) in cases.items():
        bad = write(tmp_path / f"{name.replace(' ', '_')}.ntkc", data)
        with pytest.raises(ValueError, match=message) as err:
            ntkc.load(bad)
        assert str(bad) in str(err.value), name


def test_cost_estimate_is_the_running_method_s():
    f, params, x1, _ = models.mlp()
    structured = ntkc.compile(f, x1, None, params, vmap_axes=0, method="structured")
    jacobian = ntkc.compile(f, x1, None, params, vmap_axes=0, method="jacobian")
    assert structured.cost.estimate == structured.plan.cost
    assert jacobian.cost.estimate_flops == jacobian.plan.method_costs["jacobian"]
    assert jacobian.cost.estimate_flops != structured.cost.estimate_flops
