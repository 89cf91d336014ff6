"""The vectors port's contract, over every adapter this machine can reach.

The numpy store runs always, in memory and file-backed. Weaviate runs when
``QUANTMESH_TEST_WEAVIATE_URL`` names a server (e.g. ``weaviate://:quantmesh@127.0.0.1:8080``
against the compose stack with the port published); each test gets a collection of its
own, dropped afterwards.

The data are crafted so that the nearest neighbours are known exactly: states lie close
to the axes of an 8-dimensional basis, at known small angles from their axis (towards
the next axis), so every distance to a query on an axis is a known ``1 - cos``.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import pytest

from quantmesh.storage.vectors import (
    MarketState,
    Neighbour,
    VectorPort,
    VectorStoreError,
    open_vectors,
)

WEAVIATE_URL = os.environ.get("QUANTMESH_TEST_WEAVIATE_URL", "")
DIM = 8
H = 3_600_000
T0 = 1_735_689_600_000  # 2025-01-01: epoch ms beyond 2^31 and 2^32, exact in float64
ANGLES = (0.05, 0.10, 0.20)  # radians from each state's axis, towards the next axis


def axis(i: int) -> np.ndarray:
    vector = np.zeros(DIM)
    vector[i % DIM] = 1.0
    return vector


def near_axis(i: int, angle: float) -> np.ndarray:
    return math.cos(angle) * axis(i) + math.sin(angle) * axis(i + 1)


def crafted(symbol: str = "EURUSD", start: int = T0) -> dict[tuple[int, float], MarketState]:
    """Three states per axis; the state of (axis i, angle a) returned 100·i + 1000·a bps."""
    states = {}
    for i in range(DIM):
        for j, angle in enumerate(ANGLES):
            time_msc = start + (i * len(ANGLES) + j) * H
            states[i, angle] = MarketState.of(
                symbol, time_msc, near_axis(i, angle), 100.0 * i + 1000.0 * angle, H
            )
    return states


def _weaviate_url() -> str:
    parts = urlsplit(WEAVIATE_URL)
    collection = f"QuantmeshTest{uuid.uuid4().hex[:12]}"
    query = "&".join(filter(None, [parts.query, urlencode({"collection": collection})]))
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(params=["numpy-memory", "numpy-file", "weaviate"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorPort]:
    if request.param == "numpy-memory":
        opened = open_vectors("memory://")
    elif request.param == "numpy-file":
        opened = open_vectors(f"file:///{tmp_path}/states.npz")
    else:
        if not WEAVIATE_URL:
            pytest.skip(
                "Weaviate cannot run on this machine; set QUANTMESH_TEST_WEAVIATE_URL "
                "(e.g. weaviate://:quantmesh@127.0.0.1:8080) to run the contract against it"
            )
        opened = open_vectors(_weaviate_url(), "QUANTMESH_TEST_WEAVIATE_URL")
    try:
        yield opened
    finally:
        drop = getattr(opened, "drop_collection", None)
        if drop is not None:
            drop()
        opened.close()


def ids(neighbours: list[Neighbour]) -> list[str]:
    return [n.state.id for n in neighbours]


def test_nearest_returns_the_known_neighbours_nearest_first(store: VectorPort) -> None:
    states = crafted()
    store.upsert(list(states.values()))

    found = store.nearest(axis(3), 5)

    # Axis 3's states by angle, then axis 2's, which lean towards axis 3 by sin(angle).
    expected = [states[3, 0.05], states[3, 0.10], states[3, 0.20], states[2, 0.20], states[2, 0.10]]
    assert ids(found) == [s.id for s in expected]
    distances = [n.distance for n in found]
    assert distances == pytest.approx(
        [1 - math.cos(a) for a in ANGLES] + [1 - math.sin(0.20), 1 - math.sin(0.10)], abs=1e-5
    )


def test_nearest_returns_each_state_as_stored(store: VectorPort) -> None:
    states = crafted()
    store.upsert(list(states.values()))

    (found,) = store.nearest(near_axis(6, 0.10), 1)

    want = states[6, 0.10]
    assert found.distance == pytest.approx(0.0, abs=1e-6)
    got = found.state
    assert (got.id, got.symbol, got.time_msc, got.horizon_ms) == (
        want.id,
        want.symbol,
        want.time_msc,
        want.horizon_ms,
    )
    assert got.time_msc == T0 + (6 * 3 + 1) * H  # exact, not rounded through a float32
    assert got.next_return_bps == pytest.approx(700.0)
    assert got.outcome_ms == want.outcome_ms
    assert np.allclose(got.vector, want.vector, atol=1e-6)
    assert np.linalg.norm(got.vector) == pytest.approx(1.0, abs=1e-6)


def test_nearest_compares_directions_only(store: VectorPort) -> None:
    states = crafted()
    store.upsert(list(states.values()))

    scaled = store.nearest(250.0 * near_axis(1, 0.05), 1)

    assert ids(scaled) == [states[1, 0.05].id]
    assert scaled[0].distance == pytest.approx(0.0, abs=1e-6)


def test_nearest_when_k_exceeds_count_returns_every_state_sorted(store: VectorPort) -> None:
    states = crafted()
    store.upsert(list(states.values()))

    found = store.nearest(axis(0), 100)

    assert len(found) == len(states) == store.count()
    assert sorted(ids(found)) == sorted(s.id for s in states.values())
    distances = [n.distance for n in found]
    assert distances == sorted(distances)
    assert ids(found)[:3] == [states[0, a].id for a in ANGLES]


def test_nearest_with_k_zero_or_an_empty_store_returns_nothing(store: VectorPort) -> None:
    assert store.nearest(axis(0), 5) == []
    assert store.count() == 0
    store.upsert(list(crafted().values()))
    assert store.nearest(axis(0), 0) == []


def test_nearest_with_symbol_keeps_that_symbols_states(store: VectorPort) -> None:
    eurusd = crafted("EURUSD")
    gbpusd = crafted("GBPUSD")
    store.upsert([*eurusd.values(), *gbpusd.values()])

    found = store.nearest(axis(4), 4, symbol="GBPUSD")

    assert ids(found) == [gbpusd[4, a].id for a in ANGLES] + [gbpusd[3, 0.20].id]
    assert {n.state.symbol for n in store.nearest(axis(4), 100, symbol="EURUSD")} == {"EURUSD"}
    assert store.nearest(axis(4), 4, symbol="USDJPY") == []


def test_nearest_before_ms_keeps_states_whose_outcome_was_known(store: VectorPort) -> None:
    states = crafted()
    store.upsert(list(states.values()))
    late, early = states[5, 0.05], states[5, 0.10]
    assert late.time_msc < early.time_msc  # crafted order: angle 0.05 first

    # At late.outcome_ms exactly, the state's outcome is known: it is included...
    at_outcome = store.nearest(axis(5), 1, before_ms=late.outcome_ms)
    assert ids(at_outcome) == [late.id]
    # ...one millisecond earlier it is not, and nothing later than it is either.
    before = store.nearest(axis(5), 100, before_ms=late.outcome_ms - 1)
    assert late.id not in ids(before)
    assert all(n.state.outcome_ms <= late.outcome_ms - 1 for n in before)
    assert len(before) == 5 * len(ANGLES)  # axes 0..4: every state finished before it
    assert store.nearest(axis(5), 10, before_ms=T0) == []  # no outcome known yet


def test_nearest_combines_symbol_and_before_ms(store: VectorPort) -> None:
    eurusd = crafted("EURUSD")
    gbpusd = crafted("GBPUSD", start=T0 + 1000 * H)  # every GBPUSD state is later
    store.upsert([*eurusd.values(), *gbpusd.values()])
    cutoff = eurusd[7, 0.20].outcome_ms

    found = store.nearest(axis(2), 100, symbol="GBPUSD", before_ms=cutoff)
    assert found == []
    found = store.nearest(axis(2), 2, symbol="EURUSD", before_ms=cutoff)
    assert ids(found) == [eurusd[2, 0.05].id, eurusd[2, 0.10].id]


def test_upsert_is_idempotent_and_replaces_a_state(store: VectorPort) -> None:
    states = crafted()
    store.upsert(list(states.values()))
    store.upsert(list(states.values()))
    assert store.count() == len(states)

    old = states[1, 0.05]
    revised = MarketState.of(old.symbol, old.time_msc, near_axis(1, 0.05), -42.5, H)
    assert revised.id == old.id
    store.upsert([revised])

    assert store.count() == len(states)
    (found,) = store.nearest(axis(1), 1)
    assert found.state.id == old.id
    assert found.state.next_return_bps == pytest.approx(-42.5)


def test_upsert_of_many_states_in_several_batches(store: VectorPort) -> None:
    rng = np.random.default_rng(7)
    many = [
        MarketState.of("EURUSD", T0 + i * H, rng.normal(size=DIM), float(i), H)
        for i in range(1_200)
    ]
    store.upsert(many)
    assert store.count() == 1_200
    target = many[777]
    (found,) = store.nearest(target.vector, 1)
    assert found.state.id == target.id


def test_a_vector_of_another_length_is_refused(store: VectorPort) -> None:
    store.upsert(list(crafted().values()))
    with pytest.raises(VectorStoreError):
        store.upsert([MarketState.of("EURUSD", T0 - H, np.ones(DIM + 1), 0.0, H)])
    with pytest.raises(VectorStoreError):
        store.nearest(np.ones(DIM + 1), 3)
    with pytest.raises(ValueError, match="zero vector"):
        store.nearest(np.zeros(DIM), 3)


def test_a_file_store_keeps_its_states_across_reopening(tmp_path: Path) -> None:
    url = f"file:///{tmp_path}/states.npz"
    states = crafted()
    first = open_vectors(url)
    first.upsert(list(states.values()))
    first.close()

    again = open_vectors(url)
    try:
        assert again.count() == len(states)
        assert ids(again.nearest(axis(3), 3)) == [states[3, a].id for a in ANGLES]
        again.upsert([crafted(start=T0 + 500 * H)[0, 0.05]])
        assert again.count() == len(states) + 1
    finally:
        again.close()
    assert open_vectors(url).count() == len(states) + 1


def test_a_file_store_writes_during_upserts_when_its_flush_interval_passed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "states.npz"
    store = open_vectors(f"file:///{path}?flush_seconds=0")
    store.upsert(list(crafted().values()))
    # Not closed: the file was written by the upsert itself.
    assert open_vectors(f"file:///{path}").count() == len(crafted())
