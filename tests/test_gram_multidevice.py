"""ntkc.gram over 4 (forced host) devices equals the single-device kernel, and uses all 4.

Each test runs in a subprocess: the device count is fixed when JAX starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    import jax, numpy as np, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import ntkc
    from ntkc import _gram

    assert len(jax.devices()) == 4, jax.devices()
    R = np.random.default_rng(0)
    params = {"w": R.standard_normal((3, 6)), "v": R.standard_normal((6, 2))}
    X1, X2 = R.standard_normal((11, 3)), R.standard_normal((6, 3))  # blocks of 4 x 2: padded
    f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]

    used = set()  # the devices that hold the sides (the blocks, for ntvp)
    side = _gram._Factored.side
    def spy(self, block):
        out = side(self, block)
        for l in jax.tree.leaves(out):  # the example axis split 4 ways, not replicated
            assert l.sharding.shard_shape(l.shape)[0] * 4 == l.shape[0], l.sharding
            used.update(l.sharding.device_set)
        return out
    _gram._Factored.side = spy

    for case in sys.argv[1:]:  # "method:symmetric" or "method:X2"
        method, x2 = case.split(":")
        x2 = None if x2 == "symmetric" else X2
        one = ntkc.ntk_fn(f, vmap_axes=0, method=method)(X1, x2, params)  # on device 0
        used.clear()
        many = ntkc.gram(f, params, X1, x2, batch_size=2, progress=False, method=method)
        np.testing.assert_allclose(many, one, rtol=1e-10, atol=1e-12)
        assert used == set(jax.devices()), (case, used)
    print("ok")
''')


def run_on_4_devices(*methods):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT, *methods], env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.quick
def test_symmetric_structured_gram_on_4_devices_equals_one_device():
    run_on_4_devices("structured:symmetric")


def test_gram_on_4_devices_equals_one_device():
    run_on_4_devices("structured:X2", "jacobian:symmetric", "jacobian:X2", "ntvp:symmetric",
                     "ntvp:X2")
