import pytest

from diffcli.errors import DiffcliError
from diffcli.workflows.draw_samples import parse_seeds


def test_seed_specs():
    assert parse_seeds(None, 3, 10) == [10, 11, 12]
    assert parse_seeds("0-4", 99, 0) == [0, 1, 2, 3, 4]
    assert parse_seeds("1,5,7-8", 99, 0) == [1, 5, 7, 8]
    assert parse_seeds([3, "9"], 99, 0) == [3, 9]
    assert parse_seeds(42, 99, 0) == [42]


@pytest.mark.parametrize("bad", ["a-b", "5-1", ""])
def test_bad_seed_specs(bad):
    with pytest.raises(DiffcliError):
        parse_seeds(bad, 1, 0)
