"""The relational port: SQLite embedded, PostgreSQL (asyncpg) when the URL names a server.

See :mod:`quantmesh.storage.relational.database` for the interface and
:mod:`quantmesh.storage.relational.migrations` for how the schema evolves.
"""

from quantmesh.storage.relational.database import (
    Database,
    DatabaseError,
    IntegrityError,
    Transaction,
    open_database,
)

__all__ = ["Database", "DatabaseError", "IntegrityError", "Transaction", "open_database"]
