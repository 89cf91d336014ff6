-- Version 1 of the PostgreSQL schema already has the execution_ names and the explicit
-- insertion orders that version 2 gives SQLite: nothing to do.
SELECT 1;
