"""The batch ledger: ranges of batch numbers, duplicates and in-flight batches."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from ironwatch.ingest.ledger import Ledger, RangeSet


def test_range_set_matches_a_plain_set() -> None:
    rng = random.Random(7)
    ranges, reference = RangeSet(), set()
    for _ in range(3000):
        if rng.random() < 0.1:
            lo = rng.randrange(500)
            hi = lo + rng.randrange(20)
            ranges.add_range(lo, hi)
            reference.update(range(lo, hi + 1))
        else:
            n = rng.randrange(500)
            ranges.add(n)
            reference.add(n)
    assert all((n in ranges) == (n in reference) for n in range(-3, 530))
    spans = ranges.ranges()
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(spans)), "ranges must be disjoint"
    assert RangeSet(spans).ranges() == spans


def test_gaps_are_the_missing_batches() -> None:
    ranges = RangeSet()
    for n in [1, 2, 3, 7, 8, 12]:
        ranges.add(n)
    assert ranges.ranges() == [[1, 3], [7, 8], [12, 12]]
    assert ranges.gaps() == [[4, 6], [9, 11]]
    for n in (4, 5, 6):
        ranges.add(n)
    assert ranges.gaps() == [[9, 11]]
    assert ranges.last == 12


def test_reserve_commit_and_duplicates() -> None:
    ledger = Ledger()
    key = ("acme", "gw-1", 5)
    assert ledger.reserve(key) == ("new", None)
    state, pending = ledger.reserve(key)
    assert state == "in_flight" and pending is not None and not pending.done()
    ledger.commit(key)
    assert pending.done() and pending.exception() is None
    assert ledger.reserve(key) == ("duplicate", None)
    assert ledger.reserve(("other", "gw-1", 5)) == ("new", None), "tenants never share batch numbers"


def test_the_batches_of_one_record_are_committed_together() -> None:
    ledger = Ledger()
    keys = [("acme", "gw-1", 1), ("acme", "gw-2", 1), ("acme", "gw-1", 2), ("beta", "gw-1", 1)]
    for key in keys:
        assert ledger.reserve(key) == ("new", None)
    _, waiter = ledger.reserve(("acme", "gw-1", 2))
    assert waiter is not None
    ledger.commit_many(keys)
    assert waiter.done() and waiter.exception() is None
    assert [ledger.reserve(key)[0] for key in keys] == ["duplicate"] * 4
    assert ledger.ranges("acme", "gw-1").ranges() == [[1, 2]]


def test_a_failed_write_can_be_retried() -> None:
    ledger = Ledger()
    key = ("acme", "gw-1", 1)
    ledger.reserve(key)
    _, waiter = ledger.reserve(key)
    assert waiter is not None
    ledger.release(key, OSError("disk full"))
    with pytest.raises(OSError):
        waiter.result(timeout=1)
    assert ledger.reserve(key) == ("new", None)


def test_only_one_of_many_concurrent_reservations_wins() -> None:
    ledger = Ledger()
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def claim() -> None:
        barrier.wait()
        outcomes.append(ledger.reserve(("acme", "gw-1", 42))[0])

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("new") == 1
    assert outcomes.count("in_flight") == 15


def test_snapshot_round_trip() -> None:
    ledger = Ledger()
    for n in (1, 2, 3, 10):
        ledger.mark(("acme", "gw-1", n))
    ledger.mark(("beta", "gw-9", 0))
    copy = Ledger()
    copy.load(ledger.snapshot())
    assert copy.snapshot() == {"acme": {"gw-1": [[1, 3], [10, 10]]}, "beta": {"gw-9": [[0, 0]]}}
    assert copy.reserve(("acme", "gw-1", 2)) == ("duplicate", None)


def test_last_counts_durable_claimed_and_failed_batches_of_that_gateway_only() -> None:
    ledger = Ledger()
    assert ledger.last("acme", "gw-1") is None
    ledger.mark(("acme", "gw-1", 7))  # found durable during recovery
    assert ledger.last("acme", "gw-1") == 7
    assert ledger.reserve(("acme", "gw-1", 9)) == ("new", None)  # being written
    assert ledger.last("acme", "gw-1") == 9
    ledger.release(("acme", "gw-1", 9), OSError("disk full"))  # may come again: still counted
    assert ledger.last("acme", "gw-1") == 9
    assert ledger.reserve(("acme", "gw-1", 8)) == ("new", None)
    ledger.commit(("acme", "gw-1", 8))
    assert ledger.last("acme", "gw-1") == 9
    assert (ledger.last("acme", "gw-2"), ledger.last("other", "gw-1")) == (None, None)
