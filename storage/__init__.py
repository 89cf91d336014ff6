"""quantmesh's storage ports: five stores, each with an embedded default and a real adapter.

- ``relational``: tenants, accounts, orders, reports, model metadata, the audit log.
  SQLite by default; PostgreSQL (asyncpg).
- ``timeseries``: ticks, bars, predictions, model performance. chDB by default;
  ClickHouse (clickhouse-connect), with the same SQL.
- ``cache``: prediction cache, latest feature vectors, counters. In-process by default;
  Redis or DragonflyDB (redis-py).
- ``vectors``: embedded market states, similarity search. numpy by default; Weaviate.
- ``graph``: the currency graph, decision provenance. networkx by default; ArangoDB.

Each port is a ``Protocol`` in its ``port.py``. One URL per store
(``QUANTMESH_<STORE>_URL``, see :mod:`quantmesh.storage.urls`) picks the adapter, so
pointing a URL at a server is all it takes to switch. Both adapters of a port pass the
same contract tests (``tests/contract``).
"""
