"""A bounded queue in front of the audit store, so the hot path never waits on the disk.

A service calls :meth:`AuditWriter.submit` where a decision happens. The record is
checked and its payload canonicalised right there (so a bad record fails its own caller,
and a payload dict the caller mutates later is already snapshotted), then queued; a
background task drains the queue in batches, each one transaction of
:meth:`~quantmesh.observability.audit.store.AuditStore.append_many` run in a worker
thread, so one fsync covers many records and the event loop never blocks on SQLite.

Backpressure, not loss
    The queue holds at most ``max_queue`` records. While it has room, ``submit`` returns
    at once; when it is full, ``submit`` waits until the drain makes room. Records are
    never dropped to keep up: a stage that outruns the disk slows down, visibly, in
    :attr:`AuditWriter.depth` and in the ``quantmesh_audit_queue_depth`` gauge (the sum of
    the depths of the process's writers).

What a crash can lose (the durability rule)
    ``submit`` returns a future that resolves to the stored record (its index and hash)
    once its batch has *committed*: that is the acknowledgement. The store commits with
    the write-ahead log fsynced (``synchronous = FULL``), so an acknowledged record
    survives any crash. A crash loses exactly the records not yet committed: those still
    in the queue and those of the batch being written (a batch is atomic, so it is
    either wholly stored or wholly absent). Their futures never resolved, so no caller
    was told they were safe. A caller that must not go on without the record awaits the
    future; one that only needs "eventually, unless the process dies" does not.

If a batch cannot be written (disk full, the file locked for longer than the store's
busy timeout), its futures fail with the error, which is also logged; nothing is
acknowledged that was not committed, and the writer carries on with the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from quantmesh.observability.audit.chain import AuditRecord
from quantmesh.observability.audit.store import AuditStore, NewRecord, PreparedRecord, prepare
from quantmesh.runtime.errors import Unavailable
from quantmesh.runtime.logging import get_logger
from quantmesh.runtime.metrics import AUDIT_QUEUE_DEPTH

__all__ = ["AuditWriter"]

_log = get_logger("audit")


@dataclass(frozen=True, slots=True)
class _Queued:
    record: PreparedRecord
    acknowledged: asyncio.Future[AuditRecord]


def _retrieve(future: asyncio.Future[AuditRecord]) -> None:
    # A failed batch is logged once by the writer; a caller that chose not to await its
    # future should not also get asyncio's "exception was never retrieved" per record.
    if not future.cancelled():
        future.exception()


class AuditWriter:
    """Queue records for the store and commit them in batches off the event loop.

    Parameters
    ----------
    store:
        Where records go; the writer is its only user in this process for writes.
    max_queue:
        Records that may wait for the disk before ``submit`` waits too.
    max_batch:
        Most records per transaction.
    max_batch_bytes:
        A batch stops growing once its payloads reach this size, so one transaction
        of large payloads does not hold the write lock for long.

    Use it as an async context manager, or call :meth:`close` to drain it before the
    store is closed. It starts its drain task on the first ``submit``.
    """

    def __init__(
        self,
        store: AuditStore,
        *,
        max_queue: int = 10_000,
        max_batch: int = 256,
        max_batch_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if max_queue < 1 or max_batch < 1 or max_batch_bytes < 1:
            raise ValueError("max_queue, max_batch and max_batch_bytes must be at least 1")
        self._store = store
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(max_queue)
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._pending = 0
        self._failed = 0
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Records submitted and not yet committed (or failed): queued plus in flight.

        It can exceed ``max_queue`` by up to one batch, the one being written.
        """
        return self._pending

    @property
    def capacity(self) -> int:
        """``max_queue``: the depth at which ``submit`` starts to wait."""
        return self._queue.maxsize

    @property
    def failed(self) -> int:
        """Records whose batch could not be written, since the writer started."""
        return self._failed

    async def submit(self, record: NewRecord) -> asyncio.Future[AuditRecord]:
        """Queue ``record``; return a future of the stored record, set once committed.

        Returns at once while the queue has room and waits for room when it is full.
        Raises :class:`~quantmesh.runtime.errors.InvalidArgument` for a bad record
        (nothing is queued) and :class:`~quantmesh.runtime.errors.Unavailable` once the
        writer is closing.
        """
        if self._closed:
            raise Unavailable("the audit writer is closed: no record can be queued")
        prepared = prepare(record)
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="audit-writer")
        acknowledged: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        acknowledged.add_done_callback(_retrieve)
        self._pending += 1
        AUDIT_QUEUE_DEPTH.inc()
        try:
            await self._queue.put(_Queued(prepared, acknowledged))
        except BaseException:
            self._pending -= 1  # cancelled while waiting for room: never queued
            AUDIT_QUEUE_DEPTH.dec()
            acknowledged.cancel()
            raise
        return acknowledged

    async def append(self, record: NewRecord) -> AuditRecord:
        """Submit ``record`` and wait until it is committed: for callers that must know."""
        return await (await self.submit(record))

    async def flush(self) -> None:
        """Wait until every record queued so far is committed (or has failed)."""
        await self._queue.join()

    async def close(self) -> None:
        """Refuse new records, commit everything queued, then stop the drain task."""
        self._closed = True
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> AuditWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].record.payload_json)
            while len(batch) < self._max_batch and size < self._max_batch_bytes:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                batch.append(item)
                size += len(item.record.payload_json)
            try:
                await self._write(batch)
            finally:
                self._pending -= len(batch)
                AUDIT_QUEUE_DEPTH.dec(len(batch))
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Queued]) -> None:
        try:
            stored = await asyncio.to_thread(
                self._store.append_many, [item.record for item in batch]
            )
        except asyncio.CancelledError:
            # Cancelled mid-write (the loop is shutting down): the thread may still
            # commit, but nobody is told so; unacknowledged is what a crash would give.
            for item in batch:
                item.acknowledged.cancel()
            raise
        except Exception as error:
            self._failed += len(batch)
            _log.error(
                "audit batch not written",
                records=len(batch),
                first_decision=batch[0].record.decision_id,
                error=repr(error),
            )
            for item in batch:
                if not item.acknowledged.done():
                    item.acknowledged.set_exception(error)
            return
        for item, record in zip(batch, stored, strict=True):
            if not item.acknowledged.done():  # a caller may have cancelled its future
                item.acknowledged.set_result(record)
