"""Domain errors that service cores raise, and their one mapping to gRPC status codes.

Cores stay free of grpc: they raise these plain exceptions with a message written for a
person. Adapters call :func:`abort_on_domain_error` (or catch :class:`DomainError`) and
answer the matching status, so every service reports bad input the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc


class DomainError(Exception):
    """Base of errors a client caused or can act on; ``status`` is the gRPC code."""

    status: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(DomainError):
    """The request is malformed: a missing field, a bad value, an inconsistent range."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    """The request names something that does not exist (a symbol, a model, an order)."""

    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    """The request would create something that exists (a name or id already taken)."""

    status = grpc.StatusCode.ALREADY_EXISTS


class OutOfRange(DomainError):
    """The request reads past the end of a finite sequence (e.g. ``from_seq`` past the end)."""

    status = grpc.StatusCode.OUT_OF_RANGE


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the request (e.g. kill switch engaged)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    """A quota or rate limit is used up."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(DomainError):
    """The caller is known but not allowed to do this."""

    status = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(DomainError):
    """The service cannot serve now (e.g. it is draining); retrying elsewhere may work."""

    status = grpc.StatusCode.UNAVAILABLE


@asynccontextmanager
async def abort_on_domain_error(
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[None]:
    """Answer a :class:`DomainError` raised in the block with its status and message."""
    try:
        yield
    except DomainError as error:
        await context.abort(error.status, str(error))
