"""The all-pairs test grids: every two values of two options meet, in fewer rows than the
product, and NTKC_FULL_GRID=1 gives the product."""

import itertools

import pytest

import grids

OPTIONS = [
    (["jacobian", "ntvp", "structured", "auto"], list(range(7)), [None, 0], ["none", "given"]),
    (["structured", "jacobian", "ntvp", "auto"], [(), (-1,), (0,)], [True, False]),
    ([1, 2], [3, 4], [5, 6], [7, 8], [9, 10]),
    ([1, 2, 3], ["a"], [True, False]),
]


@pytest.mark.quick
@pytest.mark.parametrize("options", OPTIONS)
def test_every_pair_of_values_meets(options):
    rows, product = grids.all_pairs(*options), list(itertools.product(*options))
    assert len(set(rows)) == len(rows) <= len(product)
    for i, j in itertools.combinations(range(len(options)), 2):
        met = {(row[i], row[j]) for row in rows}
        assert met == set(itertools.product(options[i], options[j])), (i, j)
    assert set(rows) <= set(product)


def test_fewer_rows_than_the_product():
    assert [len(grids.all_pairs(*options)) for options in OPTIONS[:3]] == [28, 12, 6]


def test_two_options_and_the_full_grid_are_the_product(monkeypatch):
    assert grids.all_pairs([1, 2], "ab") == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    monkeypatch.setattr(grids, "FULL_GRID", True)
    options = OPTIONS[0]
    assert grids.all_pairs(*options) == list(itertools.product(*options))
