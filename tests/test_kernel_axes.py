"""ntkc._axes.KernelAxes: one layout (each output axis's positions in the kernel) from which the
kernel's shape, einsum labels, positions and mirror permutation all follow."""

import itertools

import pytest

from ntkc._axes import KernelAxes


def test_layout_of_free_traced_and_diagonal_axes():
    # axes 0 free, 1 traced, 2 diagonal, 3 free
    axes = KernelAxes((2, 3, 4, 5), (6, 3, 4, 7), trace=(1,), diagonal=(2,))
    assert axes.layout() == ((0, 1), (), (2,), (3, 4))
    assert axes.kernel_shape == (2, 6, 4, 5, 7)
    assert axes.kernel_position(3) == (3, 4) and axes.kernel_position(1) == ()
    assert axes.mirror_permutation() == [1, 0, 2, 4, 3]
    assert axes.labels() == ("aceg", "bceh", "abegh")
    assert axes.kernel_labels() == [0, 1, 4, 6, 7]
    with pytest.raises(ValueError):
        axes.kernel_position(4)


@pytest.mark.parametrize("ndim", [0, 1, 2, 3])
def test_every_view_follows_the_layout(ndim):
    for kinds in itertools.product("tdf", repeat=ndim):
        axes = KernelAxes(tuple(range(2, 2 + ndim)), tuple(range(5, 5 + ndim)),
                          tuple(a for a, k in enumerate(kinds) if k == "t"),
                          tuple(a for a, k in enumerate(kinds) if k == "d"))
        layout = axes.layout()
        flat = [p for ps in layout for p in ps]
        assert flat == list(range(len(axes.kernel_shape)))
        assert [len(ps) for ps in layout] == [{"t": 0, "d": 1, "f": 2}[k] for k in kinds]
        assert sorted(axes.mirror_permutation()) == flat
        assert len(axes.labels()[2]) == len(flat) == len(axes.kernel_labels())
        expected = [l for a, k in enumerate(kinds)
                    for l in {"t": [], "d": [2 * a], "f": [2 * a, 2 * a + 1]}[k]]
        assert axes.kernel_labels() == expected
