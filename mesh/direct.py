"""Proxyless mode (``--mesh direct``): gRPC's own mutual TLS and the policy, no Envoy.

The same certificates as the Envoy mesh (:mod:`quantmesh.mesh.pki`) and the same checks:
the server requires a client certificate of the mesh's CA, and
:class:`PolicyAuthorization` admits a call only if the policy grants its method to the
SPIFFE id in that certificate (gRPC exposes it as the ``peer_spiffe_id`` property).
Anything else is PERMISSION_DENIED, and the denial is logged with caller and method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc

from quantmesh.mesh.pki import service_host_name
from quantmesh.mesh.policy import MeshPolicy
from quantmesh.runtime.logging import get_logger

_log = get_logger("mesh.authz")

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # grpc's classes are generic only in its type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Interceptor = grpc.aio.ServerInterceptor


def server_credentials(pki_dir: Path, service: str) -> grpc.ServerCredentials:
    """TLS for ``service``'s server: its own certificate, client certificates required."""
    folder = pki_dir / service
    return grpc.ssl_server_credentials(
        [((folder / "key.pem").read_bytes(), (folder / "cert.pem").read_bytes())],
        root_certificates=(folder / "ca.pem").read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(pki_dir: Path, identity: str) -> grpc.ChannelCredentials:
    """TLS for a client calling as ``identity``: its certificate, the mesh's CA as trust."""
    folder = pki_dir / identity
    return grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.pem").read_bytes(),
        private_key=(folder / "key.pem").read_bytes(),
        certificate_chain=(folder / "cert.pem").read_bytes(),
    )


def peer_options(peer: str) -> list[tuple[str, str]]:
    """Channel options that make gRPC verify the server is ``peer``.

    gRPC checks host names, not URI SANs; a service's certificate carries the DNS name
    ``<peer>.quantmesh.local`` for exactly this.
    """
    return [("grpc.ssl_target_name_override", service_host_name(peer))]


def peer_channel(
    address: str,
    pki_dir: Path,
    identity: str,
    peer: str,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to ``peer`` at ``address``, presenting ``identity``'s certificate."""
    return grpc.aio.secure_channel(
        address,
        channel_credentials(pki_dir, identity),
        options=peer_options(peer),
        interceptors=interceptors or None,
    )


class PolicyAuthorization(Interceptor):
    """Admit a call only if the policy grants its method to the caller's SPIFFE id."""

    def __init__(self, policy: MeshPolicy) -> None:
        self._policy = policy
        self._prefix = f"spiffe://{policy.trust_domain}/"

    def caller(self, context: Context) -> str | None:
        """The caller's mesh identity, from its certificate; None if it has none of ours."""
        ids = list(context.auth_context().get("peer_spiffe_id", []))
        if len(ids) != 1:
            return None
        spiffe = ids[0].decode()
        return spiffe.removeprefix(self._prefix) if spiffe.startswith(self._prefix) else None

    async def authorize(self, method: str, context: Context) -> None:
        """Abort with PERMISSION_DENIED unless the caller may call ``method``."""
        caller = self.caller(context)
        if caller is not None and self._policy.allowed(caller, method):
            return
        who = f"spiffe://{self._policy.trust_domain}/{caller}" if caller else "a caller"
        _log.warning("denied", caller=caller or "unknown", method=method, peer=context.peer())
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{who} may not call {method}: the mesh policy does not grant it",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return cast(Handler, None)
        return _guarded(handler, handler_call_details.method, self.authorize)


def _guarded(
    handler: Handler,
    method: str,
    authorize: Callable[[str, Context], Awaitable[None]],
) -> Handler:
    """``handler`` with ``authorize`` run before its behaviour, whatever its kind."""
    # grpc's stubs type behaviours as synchronous; on a grpc.aio server they are async.
    behaviour: Any
    serializers: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            await authorize(method, context)
            return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)
    if handler.unary_stream is not None:
        behaviour = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await authorize(method, context)
            async for item in behaviour(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
    if handler.stream_unary is not None:
        behaviour = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            await authorize(method, context)
            return await behaviour(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
    behaviour = handler.stream_stream

    async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        await authorize(method, context)
        async for item in behaviour(requests, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)
