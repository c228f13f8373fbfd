"""bench/profile.py reads XLA's optimized HLO: each op's kind, phase and FLOPs (no timing here)."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from bench import profile


def _program():
    def f(x, w, v):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y).reshape(x.shape[0], -1) @ v

    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 3, 5), jnp.float32)
    v = jax.ShapeDtypeStruct((8 * 8 * 5, 7), jnp.float32)
    return jax.jit(f).lower(x, w, v).compile().as_text()


@pytest.mark.quick
def test_conv_and_dot_flops_from_the_hlo():
    hlo = profile.parse_hlo(_program())
    flops = {}
    for info in hlo.values():  # each convolution and dot, wherever XLA fused it
        if info["opcode"] in ("convolution", "dot"):
            flops.setdefault(info["opcode"], set()).add(profile.op_flops(info, hlo))
    assert flops == {"convolution": {2 * 2 * 8 * 8 * 5 * (3 * 3 * 3)},
                     "dot": {2 * 2 * 7 * (8 * 8 * 5)}}
    # a fusion counts the FLOPs of everything it runs
    for info in hlo.values():
        if info["body"]:
            inner = [i for i in info["body"] if i["opcode"] in ("convolution", "dot")]
            assert profile.op_flops(info, hlo) == sum(profile.op_flops(i, hlo) for i in inner)


@pytest.mark.quick
def test_kinds_and_phases():
    copy = dict(opcode="fusion", body=[dict(opcode="transpose"), dict(opcode="parameter")],
                source="jit(f)/vmap()/transpose")
    select = dict(opcode="fusion", body=[dict(opcode="select"), dict(opcode="compare")],
                  source="jit(f)/vmap(vmap(transpose()))/select_n")
    assert profile.kind(copy) == "copy/transpose"
    assert profile.kind(select) == "elementwise"
    assert profile.phase(select) == "cotangent pass"
    assert profile.phase(dict(copy, source="")) == "unattributed"
    assert profile.phase(dict(copy, source="jit(f)/dot_general")) == "terms"
