"""Real servers for the contract suites: each starts once per session, on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quantmesh.storage.local_servers import LocalPostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster (the machine's own binaries, as the postgres user)."""
    with LocalPostgres() as server:
        yield server
