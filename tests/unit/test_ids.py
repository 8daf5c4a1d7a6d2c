"""The vectorised id check over Arrow columns gives exactly the answer of the regular expression."""

from __future__ import annotations

import random
import string

import numpy as np
import pyarrow as pa
import pytest

from ironwatch.model import all_valid_ids, is_id, valid_ids

EDGES = ["", "a", "-a", ".a", "_a", "a-", "a" * 64, "a" * 65, "é", "aé", "s-0001", "x\n", "\nx", "a b"]


def names(count: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    odd = string.ascii_letters + string.digits + "._- /\n\x00é€"
    plain = string.ascii_letters + "._-"
    out: list[str | None] = [*EDGES, None]
    for _ in range(count):
        chars = odd if rng.random() < 0.3 else plain
        out.append("".join(rng.choice(chars) for _ in range(rng.randint(0, 70))))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_valid_ids_agrees_with_the_pattern(seed: int) -> None:
    cases = names(5000, seed)
    column = pa.array(cases, pa.string())
    want = np.array([c is not None and is_id(c) for c in cases])
    assert 0 < want.sum() < len(cases)
    assert (valid_ids(column) == want).all()
    for offset in (0, 1, 7, 333):  # slices start inside the buffers
        part = column.slice(offset, 2000)
        assert (valid_ids(part) == want[offset : offset + 2000]).all()
        assert all_valid_ids(part) == bool(want[offset : offset + 2000].all())
    good = pa.array([c for c, ok in zip(cases, want, strict=True) if ok], pa.string())
    assert all_valid_ids(good) and all_valid_ids(good.slice(3, 100))


@pytest.mark.parametrize("bad", [name for name in EDGES if not is_id(name)])
def test_one_bad_id_spoils_a_column(bad: str) -> None:
    column = pa.array(["s-1", "s-2", bad, "s-3"], pa.string())
    assert not all_valid_ids(column)
    assert valid_ids(column).tolist() == [True, True, False, True]


def test_nulls_and_empty_columns() -> None:
    assert all_valid_ids(pa.array([], pa.string()))
    assert not all_valid_ids(pa.array(["a", None], pa.string()))
    assert valid_ids(pa.array(["a", None], pa.string())).tolist() == [True, False]
    assert valid_ids(pa.array(["a", "b c"], pa.large_string())).tolist() == [True, False]
