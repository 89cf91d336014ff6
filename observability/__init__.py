"""Tracing of AI decisions, the hash-chained audit log and metrics.

- :mod:`.audit`: the append-only, hash-chained decision log, its gRPC service and the
  store behind ``quantmesh audit``.

Tracing is still to come; batches already carry a trace context field.
"""
