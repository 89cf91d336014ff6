"""Consumer side of execution's report stream, for analytics, benchmarks and tests."""

from __future__ import annotations

import grpc

from quantmesh.execution.v1 import execution_pb2, execution_pb2_grpc
from quantmesh.runtime.subscriber import StreamSpec, StreamSubscriber


class ExecutionReportSubscriber(StreamSubscriber[execution_pb2.ExecutionReportBatch]):
    """Read execution reports exactly once across reconnects (see :class:`StreamSubscriber`).

    The subscription names no account: only then are seqs consecutive (a filtered
    stream has gaps, which the subscriber would take for a lost batch). Reports of other
    accounts are recorded too and simply not read back for this account.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        from_seq: int = 0,
        batch_size: int = 100,
        window: int = 8,
        max_resumes: int = 10,
    ) -> None:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)

        def subscription(from_seq: int, initial_credit: int) -> execution_pb2.Subscription:
            return execution_pb2.Subscription(
                from_seq=from_seq, batch_size=batch_size, initial_credit=initial_credit
            )

        spec: StreamSpec[execution_pb2.ExecutionReportBatch] = StreamSpec(
            open_call=stub.StreamExecutionReports,
            request_type=execution_pb2.StreamExecutionReportsRequest,
            subscription=subscription,
            size=lambda batch: len(batch.reports),
        )
        super().__init__(spec, from_seq=from_seq, window=window, max_resumes=max_resumes)
