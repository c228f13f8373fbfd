"""The ``ntkc`` command.

``ntkc demo`` computes the NTK of a small built-in ResNet-style CNN on synthetic CIFAR-shaped data
with every method ntkc offers, and prints a table of compile time, run time and deviation from a
float64 reference.

``ntkc inspect MODULE:FACTORY`` imports MODULE, calls ``FACTORY()`` for ``(f, params, x1)`` or
``(f, params, x1, x2)`` and prints what the structured method compiles for them: the plan table,
and optionally its graph as DOT and the emitted program as StableHLO.

``ntkc gram MODULE:FACTORY --data X.npy --out DIR`` computes the Gram matrix of a dataset into a
tile store (:mod:`ntkc.gram_store`), one command per process: under ``jax.distributed`` the
processes share the tiles.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- the demo model


def _conv(x, w, stride=1):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding="SAME",
        dimension_numbers=_DIMENSION_NUMBERS,
    )


def _bias(b):
    # Explicit broadcast: callers may run with jax_numpy_rank_promotion="raise".
    return b.reshape((1,) * 3 + b.shape)


def resnet(params, x):
    """A small ResNet-style CNN on NHWC images: a 3x3 stem to 16 channels, two residual blocks,
    a stride-2 residual block to 32 channels (1x1 projection shortcut), global average pooling and
    a dense layer to 10 outputs."""
    h = jax.nn.relu(_conv(x, params["stem"]["w"]) + _bias(params["stem"]["b"]))
    for block in params["blocks"]:
        r = jax.nn.relu(_conv(h, block["w1"], block["stride"]) + _bias(block["b1"]))
        r = _conv(r, block["w2"]) + _bias(block["b2"])
        shortcut = h if "proj" not in block else _conv(h, block["proj"], block["stride"])
        h = jax.nn.relu(r + shortcut)
    h = jnp.mean(h, axis=(1, 2))
    return h @ params["head"]["w"] + params["head"]["b"][None, :]


def init_resnet(rng: np.random.Generator, channels=3, width=16, outputs=10, dtype=np.float32):
    """He-normal weights and zero biases for :func:`resnet`, drawn with numpy (``jax.random``
    would compile one sampler per shape, seconds on a small CPU).

    ``stride`` entries are Python ints, which are pytree leaves: the demo strips them from the
    trainable params with :func:`split_strides`.
    """

    def normal(shape, std):
        return jnp.asarray(std * rng.standard_normal(shape), dtype)

    def conv(k, cin, cout):
        return normal((k, k, cin, cout), np.sqrt(2.0 / (k * k * cin)))

    zeros = lambda n: jnp.zeros((n,), dtype)
    blocks = []
    for cin, cout, stride in ((width, width, 1), (width, width, 1), (width, 2 * width, 2)):
        block = {"w1": conv(3, cin, cout), "b1": zeros(cout),
                 "w2": conv(3, cout, cout), "b2": zeros(cout), "stride": stride}
        if stride != 1 or cin != cout:
            block["proj"] = conv(1, cin, cout)
        blocks.append(block)
    return {"stem": {"w": conv(3, channels, width), "b": zeros(width)},
            "blocks": blocks,
            "head": {"w": normal((2 * width, outputs), np.sqrt(1.0 / (2 * width))),
                     "b": zeros(outputs)}}


def split_strides(params):
    """``(f, trainable)``: the strides moved out of the params pytree into a closure."""
    strides = [block.pop("stride") for block in params["blocks"]]

    def f(trainable, x):
        blocks = [{**b, "stride": s} for b, s in zip(trainable["blocks"], strides)]
        return resnet({**trainable, "blocks": blocks}, x)

    return f, params


# ----------------------------------------------------------------------------- the demo


def reference_ntk(f, x, params):
    """The demo's reference: the NTK with ``trace_axes=(-1,)`` in float64, from per-example
    Jacobians (``jax.vmap`` of ``jax.jacrev``, valid because examples do not interact) contracted
    in numpy. It shares no code with ntkc's methods, and is cheaper than
    :func:`ntkc.testing.reference_ntk`, which differentiates the whole batch for every output row.
    Needs ``jax_enable_x64``."""
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jnp.asarray(x, jnp.float64)
    one = lambda p, xi: f(p, xi[None])[0]
    jac = jax.jit(jax.vmap(jax.jacrev(one), in_axes=(None, 0)))(params, x)
    n, outputs = x.shape[0], jax.eval_shape(one, params, x[0]).shape[0]
    j = np.concatenate([np.asarray(a).reshape(n, outputs, -1) for a in jax.tree.leaves(jac)], -1)
    return np.einsum("iop,jop->ij", j, j) / outputs


def _time_method(kernel_fn, x, params, repeats=3):
    start = time.perf_counter()
    theta = jax.block_until_ready(kernel_fn(x, None, params))
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(kernel_fn(x, None, params))
        runs.append(time.perf_counter() - start)
    run = statistics.median(runs)
    return theta, first - run, run


def demo(n: int = 8, seed: int = 0, size: int = 32, out=None) -> int:
    """Runs the demo and prints its table; returns the exit status (1 if a method failed)."""
    import ntkc  # here, so that ``ntkc --help`` does not import the methods

    out = out or sys.stdout
    print_ = lambda *a: print(*a, file=out, flush=True)
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # for the float64 reference only
    try:
        rng = np.random.default_rng(seed)
        f, params = split_strides(init_resnet(rng))
        x = jnp.asarray(rng.standard_normal((n, size, size, 3)), jnp.float32)
        n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
        options = dict(trace_axes=(-1,), vmap_axes=0)

        start = time.perf_counter()
        reference = reference_ntk(f, x, params)
        reference_s = time.perf_counter() - start
        scale = float(np.max(np.abs(reference)))

        print_(f"ntkc demo: ResNet-style CNN ({n_params:,} float32 params), x {x.shape} float32 "
               f"(seed {seed}), NTK {reference.shape} with trace_axes=(-1,), vmap_axes=0, "
               f"on {jax.devices()[0].platform}")
        print_(f"reference: float64 per-example Jacobians (jax.vmap(jax.jacrev(f))) contracted in "
               f"numpy, {reference_s:.2f} s; max |ref| = {scale:.4g}")
        print_("compile s: first call (argument checks, tracing, XLA compile, one run) minus run s; "
               "run s: median of 3 calls, block_until_ready")
        print_("max dev: max |NTK(float32) - ref|; rel dev: max dev / max |ref|")
        header = f"{'method':<12}{'compile s':>11}{'run s':>11}{'max dev':>12}{'rel dev':>11}"
        print_(header)
        print_("-" * len(header))

        status = 0
        for method in ntkc.METHODS:
            try:
                kernel_fn = ntkc.ntk_fn(f, method=method, **options)
                theta, compile_s, run_s = _time_method(kernel_fn, x, params)
            except NotImplementedError:
                print_(f"{method:<12}  not available")
                continue
            except Exception as err:  # report the method's failure, keep the others
                print_(f"{method:<12}  failed: {type(err).__name__}: {err}")
                status = 1
                continue
            if theta.dtype != jnp.float32:
                print_(f"{method:<12}  failed: the kernel is {theta.dtype}, expected float32")
                status = 1
                continue
            dev = float(np.max(np.abs(np.asarray(theta, np.float64) - reference)))
            print_(f"{method:<12}{compile_s:>11.3f}{run_s:>11.4f}{dev:>12.3g}{dev / scale:>11.2g}")
        print_()
        print_("The structured program (ntkc.plan): one contraction per pair of parameter uses")
        print_(ntkc.plan(f, x, None, params, **options))
        return status
    finally:
        jax.config.update("jax_enable_x64", x64)


# ----------------------------------------------------------------------------- inspect


class CommandError(Exception):
    """An error of a command: printed as one line on stderr; exit status ``status`` (2 for a
    user error such as a module that cannot be found, 1 when the work itself failed)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def _load_module(name: str):
    """Imports ``name``: a dotted module (importable from the current directory too) or a
    ``.py`` file path."""
    if name.endswith(".py") or os.sep in name or (os.altsep and os.altsep in name):
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise CommandError(f"cannot import {name!r}: no such file")
        stem = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[stem] = module  # dataclasses and pickling look modules up by name
        folder = os.path.dirname(path)
        sys.path.insert(0, folder)  # sibling imports of the file
        try:
            spec.loader.exec_module(module)
        except BaseException as err:
            sys.modules.pop(stem, None)
            raise CommandError(f"cannot import {name!r}: {_one_line(err)}") from err
        finally:
            sys.path.remove(folder)
        return module
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # a console script does not put the current directory on the path
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise CommandError(f"cannot import module {name!r}: no module named {err.name!r} "
                               f"(looked in the current directory and on sys.path)") from err
        raise CommandError(f"cannot import module {name!r}: {_one_line(err)}") from err
    except BaseException as err:  # the module itself failed: say how, in one line
        raise CommandError(f"cannot import module {name!r}: {_one_line(err)}") from err
    finally:
        if added:
            sys.path.remove(cwd)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _short(value) -> str:
    text = " ".join(repr(value).split())
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} (of type {type(value).__name__})"


def load_factory(spec: str):
    """``(f, params, x1, x2)`` from ``MODULE:FACTORY`` (``x2`` None when the factory returns
    three values). Raises :class:`CommandError` with a one-line message."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"expected MODULE:FACTORY (e.g. mymodel:make or path/to/model.py:make), "
                           f"got {spec!r}")
    module = _load_module(module_name)
    factory = module
    for part in attr.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(factory):
        raise CommandError(f"{spec} is {_short(factory)}, not a callable factory")
    try:
        result = factory()
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):
            raise
        raise CommandError(f"{spec}() raised {_one_line(err)}") from err
    expected = "expected a tuple (f, params, x1) or (f, params, x1, x2)"
    if not isinstance(result, (tuple, list)):
        raise CommandError(f"{spec}() returned {_short(result)}; {expected}")
    if len(result) not in (3, 4):
        raise CommandError(f"{spec}() returned {len(result)} values; {expected}")
    f, params, x1 = result[:3]
    x2 = result[3] if len(result) == 4 else None
    if not callable(f):
        raise CommandError(f"{spec}() returned {_short(f)} as f, which is not callable; "
                           f"{expected}")
    return f, params, x1, x2


def _axes_list(text: str) -> tuple:
    """``--trace-axes`` and ``--diagonal-axes``: comma-separated ints; ``none`` or empty: ()."""
    text = text.strip()
    if text.lower() in ("", "none", "()"):
        return ()
    try:
        return tuple(int(t) for t in text.strip("()").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints (e.g. -1 or 0,2) or 'none', got {text!r}") from None


def _vmap_axes(text: str):
    """``--vmap-axes``: one int, or ``none``/empty for None."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'none', got {text!r}") from None


def inspect(spec: str, method="auto", trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
            strict=False, dot=None, hlo=False, out=None) -> int:
    """Runs ``ntkc inspect``; returns the exit status. Errors in finding or calling the factory
    raise :class:`CommandError`."""
    import ntkc

    out = out or sys.stdout
    f, params, x1, x2 = load_factory(spec)
    options = dict(trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=vmap_axes)
    describe = lambda t: ", ".join(
        f"{tuple(np.shape(a))} {getattr(a, 'dtype', type(a).__name__)}" for a in jax.tree.leaves(t))
    print(f"ntkc inspect {spec}: x1 {describe(x1)}"
          + (f", x2 {describe(x2)}" if x2 is not None else ", x2 = x1")
          + f"; {len(jax.tree.leaves(params))} param leaves; method={method!r}, "
            f"trace_axes={trace_axes}, diagonal_axes={diagonal_axes}, vmap_axes={vmap_axes}",
          file=out)
    try:
        plan = ntkc.plan(f, x1, x2, params, method=method, strict=strict, **options)
    except Exception as err:
        raise CommandError(f"ntkc.plan failed: {_one_line(err)}", status=1) from err
    print(plan, file=out)
    if dot is not None:
        text = plan.to_dot()
        if dot == "-":
            print(text, file=out)
        else:
            try:
                with open(dot, "w") as fh:
                    fh.write(text)
            except OSError as err:
                raise CommandError(f"cannot write --dot {dot!r}: {_one_line(err)}", status=1) from err
            print(f"wrote the plan's graph (DOT) to {dot}", file=out)
    if hlo:
        kernel_fn = ntkc.ntk_fn(f, method=method, strict=strict, **options)
        try:
            lowered = jax.jit(lambda a, b, p: kernel_fn(a, b, p)).lower(x1, x2, params)
            text = lowered.as_text()
        except Exception as err:
            raise CommandError(f"lowering the kernel function failed: {_one_line(err)}",
                               status=1) from err
        print(f"StableHLO of the kernel program (jax.jit(ntkc.ntk_fn(f, method={method!r}, ...))"
              ".lower(x1, x2, params).as_text()):", file=out)
        print(text, file=out)
    return 0


# ----------------------------------------------------------------------------- gram


def _initialize_distributed(coordinator, num_processes, process_id, cluster) -> None:
    """``jax.distributed.initialize`` from the flags (all three), or from the cluster's
    environment (SLURM, Open MPI, TPU pods, ...) with ``--cluster``; before any JAX computation,
    so before the factory runs."""
    flags = (coordinator, num_processes, process_id)
    if all(v is None for v in flags) and not cluster:
        return
    if cluster and any(v is not None for v in flags):
        raise CommandError("--cluster reads the process layout from the cluster's environment; "
                           "give it or --coordinator, --num-processes and --process-id, not both")
    if not cluster and any(v is None for v in flags):
        raise CommandError("--coordinator, --num-processes and --process-id go together")
    try:
        if cluster:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id)
    except Exception as err:
        raise CommandError(f"jax.distributed.initialize failed: {_one_line(err)}",
                           status=1) from err


def _load_data(path, name):
    try:
        return np.load(path, mmap_mode="r")  # examples are read block by block
    except (OSError, ValueError) as err:
        raise CommandError(f"cannot read {name} {path!r}: {_one_line(err)}") from err


def gram(spec: str, out_dir: str, data=None, x2=None, batch_size=None, memory_limit=None,
         method="auto", trace_axes=(-1,), diagonal_axes=(), cache_bytes=None, progress=True,
         coordinator=None, num_processes=None, process_id=None, cluster=False, out=None) -> int:
    """Runs ``ntkc gram``; returns the exit status."""
    _initialize_distributed(coordinator, num_processes, process_id, cluster)
    import ntkc

    out = out or sys.stdout
    f, params, x1, factory_x2 = load_factory(spec)
    if data is not None:
        x1 = _load_data(data, "--data")
        factory_x2 = None
    if x2 is not None:
        factory_x2 = _load_data(x2, "--x2")
    me, processes = jax.process_index(), jax.process_count()
    try:
        kernel = ntkc.gram(f, params, x1, factory_x2, batch_size=batch_size,
                           memory_limit=memory_limit, out=out_dir, cache_bytes=cache_bytes,
                           progress=progress, method=method, trace_axes=trace_axes,
                           diagonal_axes=diagonal_axes)
    except ValueError as err:
        raise CommandError(f"ntkc.gram failed: {_one_line(err)}", status=1) from err
    print(f"ntkc gram {spec}: process {me} of {processes} done; {out_dir}: kernel "
          f"{tuple(kernel.shape)} {kernel.dtype}", file=out, flush=True)
    return 0


# ----------------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    from ntkc.methods import registry  # the names method= accepts, registered methods included

    parser = argparse.ArgumentParser(
        prog="ntkc", description="Fast finite-width empirical Neural Tangent Kernels of JAX functions.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo", help="NTK of a small ResNet on synthetic CIFAR-shaped data, with every method",
        description="Computes the NTK of a small ResNet-style CNN (plain JAX, NHWC) on synthetic "
                    "CIFAR-shaped float32 data with each available method, and prints compile "
                    "time, run time and the deviation from a float64 reference.",
    )
    demo_parser.add_argument("--n", type=_positive, default=8, help="number of examples (default 8)")
    demo_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo_parser.add_argument("--size", type=_positive, default=32,
                             help="image height and width (default 32)")
    inspect_parser = commands.add_parser(
        "inspect", help="print the structured plan of a model from MODULE:FACTORY",
        description="Imports MODULE (a module importable from the current directory or sys.path, "
                    "or a .py file path), calls FACTORY() for (f, params, x1) or "
                    "(f, params, x1, x2), and prints ntkc.plan(f, x1, x2, params, ...): a row per "
                    "contraction with its parameter leaf, primitives, structure, method, einsum, "
                    "order and cost.",
    )
    inspect_parser.add_argument("spec", metavar="MODULE:FACTORY",
                                help="e.g. mymodel:make or path/to/model.py:make")
    inspect_parser.add_argument("--method", choices=registry.names(),
                                default="auto", help="as in ntkc.ntk_fn (default auto)")
    inspect_parser.add_argument("--trace-axes", type=_axes_list, default=(-1,), metavar="AXES",
                                help="comma-separated ints, or 'none' for () (default -1); write "
                                     "--trace-axes=-1,-2 for a list starting with a minus")
    inspect_parser.add_argument("--diagonal-axes", type=_axes_list, default=(), metavar="AXES",
                                help="comma-separated ints, or 'none' for () (default none)")
    inspect_parser.add_argument("--vmap-axes", type=_vmap_axes, default=None, metavar="AXIS",
                                help="an int, or 'none' (default none)")
    inspect_parser.add_argument("--strict", action="store_true",
                                help="fail on a primitive with no structured rule")
    inspect_parser.add_argument("--dot", metavar="FILE",
                                help="write the plan's graph as Graphviz DOT to FILE ('-': stdout)")
    inspect_parser.add_argument("--hlo", action="store_true",
                                help="also print the kernel program's StableHLO")
    gram_parser = commands.add_parser(
        "gram", help="the Gram matrix of a dataset into a tile store, one command per process",
        description="Imports MODULE and calls FACTORY() for (f, params, x1) or (f, params, x1, "
                    "x2) as ntkc inspect does, and writes ntkc.gram(f, params, X1, X2) (examples "
                    "along axis 0, vmap_axes=0) into the tile store --out (read it with "
                    "ntkc.open_gram). A rerun resumes. Under jax.distributed (--coordinator ..., "
                    "or --cluster under SLURM / Open MPI) run one command per process: the "
                    "processes share the tiles.",
    )
    gram_parser.add_argument("spec", metavar="MODULE:FACTORY",
                             help="e.g. mymodel:make or path/to/model.py:make")
    gram_parser.add_argument("--data", metavar="X.npy",
                             help="the examples (axis 0) as a .npy file (default: the factory's "
                                  "x1, and its x2 if any)")
    gram_parser.add_argument("--x2", metavar="Y.npy",
                             help="the examples of the columns (default: --data, a symmetric "
                                  "kernel)")
    gram_parser.add_argument("--out", required=True, metavar="DIR",
                             help="the tile store (a directory; a path ending in .npy writes "
                                  "one file instead, single process only)")
    gram_parser.add_argument("--batch-size", type=_positive, metavar="B",
                             help="examples per block and device (default: from --memory-limit, "
                                  "else 64)")
    gram_parser.add_argument("--memory-limit", type=_positive, metavar="BYTES",
                             help="bytes of one tile's working set (ntkc.gram's memory_limit)")
    gram_parser.add_argument("--cache-bytes", type=int, metavar="BYTES",
                             help="bytes of sides kept for reuse (default 2 GiB)")
    gram_parser.add_argument("--method", choices=registry.names(),
                             default="auto", help="as in ntkc.ntk_fn (default auto)")
    gram_parser.add_argument("--trace-axes", type=_axes_list, default=(-1,), metavar="AXES",
                             help="comma-separated ints, or 'none' for () (default -1)")
    gram_parser.add_argument("--diagonal-axes", type=_axes_list, default=(), metavar="AXES",
                             help="comma-separated ints, or 'none' for () (default none)")
    gram_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    gram_parser.add_argument("--coordinator", metavar="HOST:PORT",
                             help="jax.distributed: process 0's address and a free port")
    gram_parser.add_argument("--num-processes", type=_positive, metavar="P",
                             help="jax.distributed: the number of processes")
    gram_parser.add_argument("--process-id", type=int, metavar="I",
                             help="jax.distributed: this process, 0 to P-1")
    gram_parser.add_argument("--cluster", action="store_true",
                             help="jax.distributed.initialize() with the process layout from the "
                                  "cluster's environment (SLURM, Open MPI, Cloud TPU, ...)")
    commands.add_parser(
        "bench", help="the benchmark suite (bench/ of a source checkout; --suite paper: the "
                      "paper's cases at their scale); --help for its options",
        description="Runs bench/suite.py of the source checkout ntkc is installed from (an "
                    "editable install); the remaining arguments go to it.",
        add_help=False,
    )
    return parser


def bench(argv: Sequence[str]) -> int:
    """``ntkc bench ARGS``: ``python -m bench ARGS`` from the checkout ntkc is installed from."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "bench" / "suite.py").exists():
        raise CommandError(f"no bench/ beside the ntkc package at {root}: the benchmark suite "
                           "ships with the source checkout (pip install -e .)")
    sys.path.insert(0, str(root))
    from bench.suite import main as bench_main

    return bench_main(list(argv))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ntkc`` command; returns the exit status.

    Without a command it prints the help and returns 2; argument errors exit with status 2
    (argparse's ``SystemExit``); a command's user errors (``ntkc inspect`` with a module or
    factory that cannot be found or used) print one line on stderr and return 2.
    """
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options
        try:
            return bench(argv[1:])
        except CommandError as err:
            print(f"ntkc bench: error: {err}", file=sys.stderr)
            return err.status
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "demo": lambda a: demo(n=a.n, seed=a.seed, size=a.size),
        "inspect": lambda a: inspect(a.spec, method=a.method, trace_axes=a.trace_axes,
                                     diagonal_axes=a.diagonal_axes, vmap_axes=a.vmap_axes,
                                     strict=a.strict, dot=a.dot, hlo=a.hlo),
        "gram": lambda a: gram(a.spec, a.out, data=a.data, x2=a.x2, batch_size=a.batch_size,
                               memory_limit=a.memory_limit, method=a.method,
                               trace_axes=a.trace_axes, diagonal_axes=a.diagonal_axes,
                               cache_bytes=a.cache_bytes, progress=not a.no_progress,
                               coordinator=a.coordinator, num_processes=a.num_processes,
                               process_id=a.process_id, cluster=a.cluster),
    }
    try:
        return commands[args.command](args)
    except CommandError as err:
        sys.stdout.flush()
        print(f"ntkc {args.command}: error: {err}", file=sys.stderr)
        return err.status


if __name__ == "__main__":
    sys.exit(main())
