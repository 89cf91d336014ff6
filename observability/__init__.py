"""Tracing of AI decisions, the hash-chained audit log and metrics.

Empty until the observability issue lands; batches already carry a trace context field.
"""
