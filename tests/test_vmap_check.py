"""vmap_axes certifies that examples do not interact: a function that breaks the certificate is
refused before anything is computed (ntkc.passes.independence), and every independent model
passes the check without a false alarm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntkc
from bench import models as bench_models
from ntkc.passes.independence import example_states
from ntkc.rules.example_axes import Axis, Coupled, Unknown

import models

R = np.random.default_rng(0)
P = {"w": R.standard_normal((3, 4)) / 2}
X = R.standard_normal((5, 3))
THIS_FILE = "test_vmap_check.py"


def dense(p, x):
    return jnp.tanh(x @ p["w"])


def batch_norm(x):
    return (x - x.mean(0, keepdims=True)) / jnp.sqrt(x.var(0, keepdims=True) + 1e-5)


COUPLED = {  # name: (f, the equation the error names)
    "centred": (lambda p, x: dense(p, x - x.mean(0, keepdims=True)), "reduce_sum"),
    "batch_norm": (lambda p, x: dense(p, batch_norm(x)), "reduce_sum"),
    "softmax_over_batch": (lambda p, x: jax.nn.softmax(x @ p["w"], axis=0), "reduce_max"),
    "roll": (lambda p, x: dense(p, jnp.roll(x, 1, axis=0)), ""),
    "outer_product": (lambda p, x: (x @ p["w"]) @ (x @ p["w"]).T @ (x @ p["w"]), "dot_general"),
    "sum_over_batch_added": (lambda p, x: dense(p, x) + dense(p, x).sum(0)[None], "reduce_sum"),
    "cumsum_over_batch": (lambda p, x: dense(p, jnp.cumsum(x, 0)), "cumsum"),
    "scan_over_batch": (
        lambda p, x: dense(p, lax.scan(lambda c, r: (c + r, c + r), jnp.zeros(3), x)[1]), ""),
}


@pytest.mark.quick
@pytest.mark.parametrize("name", sorted(COUPLED))
def test_interacting_examples_are_refused_naming_the_equation(name):
    f, primitive = COUPLED[name]
    with pytest.raises(ValueError) as err:
        ntkc.ntk_fn(f, vmap_axes=0, method="jacobian")(X, None, P)
    message = str(err.value)
    assert "vmap_axes: examples interact in f" in message
    assert "vmap_axes=None" in message
    if primitive:
        assert f"`{primitive}`" in message and THIS_FILE in message, message
    # and the kernel it would have given is wrong, while vmap_axes=None is right
    want = ntkc.testing.reference_ntk(f, X, None, P)
    got = ntkc.ntk_fn(f, vmap_axes=None, method="jacobian")(X, None, P)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_the_error_names_the_batch_axis_of_the_output():
    f = lambda p, x: dense(p, (x - x.mean(1, keepdims=True)).T).T  # examples along axis 1
    with pytest.raises(ValueError, match=r"output 0 \(batch axis 1\).*example axis 1"):
        ntkc.ntk_fn(f, vmap_axes=1)(X.T, None, P)


def test_flax_batch_norm_in_training_mode_is_refused_and_eval_mode_passes():
    import flax.linen as nn

    class Net(nn.Module):
        train: bool

        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4)(x)
            x = nn.BatchNorm(use_running_average=not self.train)(x)
            return nn.Dense(2)(nn.relu(x))

    variables = Net(True).init(jax.random.PRNGKey(0), X)
    stats = variables["batch_stats"]
    train = lambda p, x: Net(True).apply({"params": p, "batch_stats": stats}, x,
                                         mutable=["batch_stats"])[0]
    with pytest.raises(ValueError, match="examples interact"):
        ntkc.ntk_fn(train, vmap_axes=0)(X, None, variables["params"])
    evaluate = lambda p, x: Net(False).apply({"params": p, "batch_stats": stats}, x)
    got = ntkc.ntk_fn(evaluate, vmap_axes=0, method="structured")(X, None, variables["params"])
    want = ntkc.testing.reference_ntk(evaluate, X, None, variables["params"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_a_primitive_outside_the_table_is_decided_by_a_perturbation():
    along_features = lambda p, x: dense(p, jnp.fft.fft(x, axis=1).real)
    along_examples = lambda p, x: dense(p, jnp.fft.fft(x, axis=0).real)
    jaxpr = jax.make_jaxpr(along_features)(P, X)
    states = example_states(jaxpr.jaxpr, [None, Axis(0)])
    assert isinstance(states[0], Unknown) and "fft" in states[0].why
    got = ntkc.ntk_fn(along_features, vmap_axes=0)(X, None, P)
    want = ntkc.testing.reference_ntk(along_features, X, None, P)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="perturbing one example changes the outputs of others.*"
                                         "fft"):
        ntkc.ntk_fn(along_examples, vmap_axes=0)(X, None, P)


def test_the_structural_check_also_runs_inside_the_users_jit():
    f = COUPLED["centred"][0]
    with pytest.raises(ValueError, match="examples interact"):
        jax.jit(lambda x, p: ntkc.ntk_fn(f, vmap_axes=0)(x, None, p))(X, P)


def test_batched_keyword_arguments_are_followed():
    f = lambda p, x, mask: dense(p, x * mask)
    coupled = lambda p, x, mask: dense(p, x * mask.mean(0, keepdims=True))
    mask = R.standard_normal((5, 3))
    axes = (0, 0, {"mask": 0})
    kfn = ntkc.ntk_fn(f, vmap_axes=axes, method="jacobian")
    want = ntkc.testing.reference_ntk(f, X, None, P, mask=mask)
    np.testing.assert_allclose(kfn(X, None, P, mask=mask), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="examples interact"):
        ntkc.ntk_fn(coupled, vmap_axes=axes)(X, None, P, mask=mask)


# --------------------------------------------------------------------- no false positives

def _states(f, params, x, in_axes):
    jaxpr = jax.make_jaxpr(f)(params, x)
    axes = [None] * len(jax.tree.leaves(params))
    prefix = jax.tree_util.tree_flatten(in_axes, is_leaf=lambda a: a is None)
    flat = [a for a, sub in zip(prefix[0], prefix[1].flatten_up_to(x))
            for _ in jax.tree.leaves(sub)]
    return example_states(jaxpr.jaxpr, axes + [None if a is None else Axis(a) for a in flat])


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_test_model_is_followed_without_a_probe(name):
    f, params, x1, _ = models.MODELS[name]()
    in_axes, out_axes = 0, 0
    if name == "pytree_input":
        in_axes, out_axes, _ = models.PYTREE_INPUT_VMAP_AXES
    if name == "mlp_kwargs":
        f = lambda p, x, f=f: f(p, x)
    states = _states(f, params, x1, in_axes)
    outs = jax.tree.leaves(out_axes) * len(states) if not isinstance(out_axes, int) else \
        [out_axes] * len(states)
    assert [s if s is None else s.axis for s in states] == outs[:len(states)], states


BENCH = {"mlp": dict(n=4, width=16, inputs=8), "cnn": dict(n=2, channels=4, image=8),
         "wrn": dict(n=2, image=8), "vit": dict(n=2, dim=16, tokens=4),
         "mixer": dict(n=2, dim=16, tokens=4), "rnn": dict(n=2, hidden=8, width=16)}


@pytest.mark.parametrize("name", sorted(BENCH))
def test_every_bench_model_is_followed_without_a_probe(name):
    f, params, x = bench_models.MODELS[name](**BENCH[name])
    assert _states(f, params, x, 0) == [Axis(0)]


def test_states_of_the_table():
    jaxpr = jax.make_jaxpr(lambda x: (x.reshape(5, 3, 1).reshape(15), x.sum(0), x.T))(X)
    merged, summed, transposed = example_states(jaxpr.jaxpr, [Axis(0)])
    assert merged == Axis(0, inner=3)
    assert isinstance(summed, Coupled) and "reduces over the example axis 0" in summed.why
    assert transposed == Axis(1)
