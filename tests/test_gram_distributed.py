"""ntkc.gram under jax.distributed, with real processes on this machine: 2 processes with 2
forced CPU devices each, a coordinator on 127.0.0.1, launched through ``ntkc gram``.

Their kernel equals the one-process kernel (symmetric and cross, in a store and in memory); a
process killed in the middle leaves its finished tiles, which a rerun does not recompute; a
store for other data is refused.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ntkc
from ntkc import _gram
from ntkc import cli
from ntkc.cli import load_factory

MODEL = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")

    R = np.random.default_rng(0)
    PARAMS = {"w": R.standard_normal((3, 6)), "v": R.standard_normal((6, 2))}

    def f(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"]

    def make():
        return f, PARAMS, R.standard_normal((4, 3))
''')

# One process: ``ntkc gram`` (argv), after two optional test hooks. NTKC_TEST_EXIT_AFTER=K: the
# process exits hard (os._exit, no cleanup) when it is about to compute its tile K + 1.
# NTKC_TEST_IN_MEMORY=PREFIX: first joins jax.distributed itself and saves the in-memory kernel
# (out=None: every process gathers all tiles) to PREFIX<process>.npy.
WORKER = textwrap.dedent('''
    import os, sys
    from ntkc import _gram, cli

    exit_after = int(os.environ.get("NTKC_TEST_EXIT_AFTER", "0"))
    if exit_after:
        pair, calls = _gram._Factored.pair, [0]
        def dying(self, *a, **k):
            if calls[0] == exit_after:
                os._exit(17)
            calls[0] += 1
            return pair(self, *a, **k)
        _gram._Factored.pair = dying

    argv = sys.argv[1:]
    prefix = os.environ.get("NTKC_TEST_IN_MEMORY")
    if prefix:
        import numpy as np
        at = argv.index("--coordinator")
        coordinator, processes, me = argv[at + 1], int(argv[at + 3]), int(argv[at + 5])
        del argv[at:at + 6]
        cli._initialize_distributed(coordinator, processes, me, False)
        import jax, ntkc
        f, params, _, _ = cli.load_factory(argv[1])
        x1 = np.load(argv[argv.index("--data") + 1])
        x2 = np.load(argv[argv.index("--x2") + 1]) if "--x2" in argv else None
        kernel = ntkc.gram(f, params, x1, x2, batch_size=2, progress=False)
        np.save(f"{prefix}{jax.process_index()}.npy", kernel)
        try:  # processes cannot share one .npy file
            ntkc.gram(f, params, x1, out="kernel.npy", progress=False)
        except ValueError as err:
            print("refused:", err, flush=True)
    sys.exit(cli.main(argv))
''')

N, N2, BATCH = 11, 6, 2  # blocks of 2 x 2 devices = 4 examples: 3 row blocks, the last padded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, args, processes=2, env=None, timeout=120, kill_rest_after=None):
    """Runs ``ntkc gram *args`` as ``processes`` processes (2 CPU devices each), joined through
    a coordinator on 127.0.0.1 when more than one; returns their exit codes and output. With
    ``kill_rest_after=I``: once process I has exited, the others are killed."""
    port = free_port()
    base = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                JAX_PLATFORMS="cpu", JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    base.pop("JAX_COORDINATOR_ADDRESS", None)
    procs, logs = [], []
    try:
        for i in range(processes):
            layout = [] if processes == 1 else [
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                "--process-id", str(i)]
            log = open(tmp_path / f"process-{len(os.listdir(tmp_path))}-{i}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, "gram", *args, "--no-progress", *layout],
                env={**base, **(env or {}).get(i, {})}, stdout=log, stderr=subprocess.STDOUT,
                cwd=tmp_path))
        if kill_rest_after is not None:
            procs[kill_rest_after].wait(timeout=timeout)
            for p in procs:
                if p.poll() is None:
                    p.kill()
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        output = []
        for log in logs:
            log.seek(0)
            output.append(log.read())
            log.close()
    return codes, output


@pytest.fixture
def model(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    f, params, _, _ = load_factory(f"{tmp_path / 'model.py'}:make")
    R = np.random.default_rng(1)
    x1, x2 = R.standard_normal((N, 3)), R.standard_normal((N2, 3))
    np.save(tmp_path / "x1.npy", x1)
    np.save(tmp_path / "x2.npy", x2)
    return f, params, x1, x2


def args(tmp_path, out, cross=False):
    return [f"{tmp_path / 'model.py'}:make", "--data", str(tmp_path / "x1.npy"),
            *(["--x2", str(tmp_path / "x2.npy")] if cross else []), "--out", str(tmp_path / out),
            "--batch-size", str(BATCH)]


def check(codes, output, want=0):
    assert codes == [want] * len(codes), "\n".join(f"--- exit {c}\n{o[-3000:]}"
                                                   for c, o in zip(codes, output))


def stat(path):
    """The tiles of a store: name -> (inode, mtime in ns). Rewriting a tile (write, rename)
    gives it a new inode."""
    return {n: (os.stat(path / n).st_ino, os.stat(path / n).st_mtime_ns)
            for n in os.listdir(path) if n.startswith("tile-")}


@pytest.mark.quick
def test_two_processes_write_the_one_process_symmetric_kernel(tmp_path, model):
    f, params, x1, _ = model
    want = np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(x1, None, params))
    check(*launch(tmp_path, args(tmp_path, "two")))
    check(*launch(tmp_path, args(tmp_path, "one"), processes=1))
    two, one = ntkc.open_gram(tmp_path / "two"), ntkc.open_gram(tmp_path / "one")
    assert two.shape == (N, N) and two.symmetric and two.complete
    np.testing.assert_allclose(np.asarray(two), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(two), np.asarray(one))
    assert len(stat(tmp_path / "two")) == 6  # 3 x 3 blocks: only the upper tiles


def test_two_processes_cross_kernel_in_a_store_and_gathered_in_memory(tmp_path, model):
    f, params, x1, x2 = model
    want = np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(x1, x2, params))
    memory = str(tmp_path / "memory-")
    codes, output = launch(tmp_path, args(tmp_path, "store", cross=True),
                           env={0: {"NTKC_TEST_IN_MEMORY": memory},
                                1: {"NTKC_TEST_IN_MEMORY": memory}})
    check(codes, output)
    store = ntkc.open_gram(tmp_path / "store")
    assert store.shape == (N, N2) and not store.symmetric and len(stat(tmp_path / "store")) == 6
    np.testing.assert_allclose(np.asarray(store), want, rtol=1e-10, atol=1e-12)
    for i in range(2):  # every process holds the whole kernel
        np.testing.assert_allclose(np.load(f"{memory}{i}.npy"), want, rtol=1e-10, atol=1e-12)
        assert "refused: gram: out='kernel.npy' is one .npy file, which 2 processes cannot " \
               "share" in output[i], output[i][-3000:]
    assert not (tmp_path / "kernel.npy").exists()


def test_a_killed_process_leaves_its_tiles_and_the_rerun_computes_only_the_rest(tmp_path,
                                                                              model):
    f, params, x1, _ = model
    x1 = np.concatenate([x1, x1[:9] * 0.5])  # 20 examples: 5 x 5 blocks, 15 tiles
    np.save(tmp_path / "x1.npy", x1)
    want = np.asarray(ntkc.ntk_fn(f, vmap_axes=0)(x1, None, params))
    store = tmp_path / "store"
    codes, output = launch(tmp_path, args(tmp_path, "store"), kill_rest_after=1,
                           env={1: {"NTKC_TEST_EXIT_AFTER": "2"}})
    assert codes[1] == 17, output[1][-3000:]
    before = stat(store)
    blocks = [(i, j) for i in range(0, 20, 4) for j in range(0, 20, 4) if j >= i]
    dead = _gram._shares(_gram._tile_order(blocks), 2)[1][:2]  # process 1's first 2 tiles
    assert {f"tile-{i // 4:05d}-{j // 4:05d}.npy" for i, j in dead} <= set(before)
    assert len(before) < 15 and not ntkc.open_gram(store).complete
    with pytest.raises(ValueError, match="not computed yet"):
        np.asarray(ntkc.open_gram(store))

    check(*launch(tmp_path, args(tmp_path, "store")))
    after = stat(store)
    assert len(after) == 15
    assert {n: after[n] for n in before} == before  # not one finished tile written again
    np.testing.assert_allclose(np.asarray(ntkc.open_gram(store)), want, rtol=1e-10, atol=1e-12)


def test_a_store_for_other_data_is_refused_by_every_process(tmp_path, model):
    check(*launch(tmp_path, args(tmp_path, "store"), processes=1))
    before = stat(tmp_path / "store")
    np.save(tmp_path / "x1.npy", np.load(tmp_path / "x1.npy") + 1)
    codes, output = launch(tmp_path, args(tmp_path, "store"))
    check(codes, output, want=1)
    for text in output:
        assert "store was written for another data; remove the directory" in text, text[-3000:]
    assert stat(tmp_path / "store") == before


def test_the_process_layout_flags_go_together(capsys):
    assert cli.main(["gram", "model:make", "--out", "k", "--coordinator", "127.0.0.1:1"]) == 2
    assert "--coordinator, --num-processes and --process-id go together" in capsys.readouterr().err
    assert cli.main(["gram", "model:make", "--out", "k", "--cluster", "--process-id", "0"]) == 2
    assert "--cluster reads the process layout" in capsys.readouterr().err
