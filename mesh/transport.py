"""How a service's own gRPC traffic is secured, chosen by ``QUANTMESH_MESH_MODE``.

``plaintext`` (the default): the service listens on loopback and calls its peers'
addresses as given. Behind the Envoy mesh that is all a service does: its sidecar
terminates mutual TLS in front of it, and the peer addresses are the sidecar's loopback
outbound listeners, so no plaintext hop leaves the machine's loopback.

``direct`` (proxyless): the service itself speaks mutual TLS with its certificate from
``QUANTMESH_MESH_PKI`` and enforces the mesh policy on each caller's SPIFFE id
(:class:`quantmesh.mesh.direct.PolicyAuthorization`). Its channels present its own
certificate and verify that the server is the peer they meant to reach. The server
picks up a rotated certificate at the next handshake, with no restart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import grpc
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from quantmesh.mesh.direct import PolicyAuthorization, peer_channel
from quantmesh.mesh.pki import CERT_FILE, KEY_FILE, TRUST_BUNDLE_FILE
from quantmesh.mesh.policy import load_policy
from quantmesh.observability import tracing

MeshMode = Literal["plaintext", "direct"]


class MeshSettings(BaseSettings):
    """The process's place in the mesh (``QUANTMESH_MESH_*``).

    Attributes
    ----------
    mode:
        ``plaintext`` (loopback; a sidecar secures the hop) or ``direct`` (gRPC mTLS).
    pki:
        PKI folder (``quantmesh pki init``); required by ``direct``.
    identity:
        Whose certificate this process presents; a service defaults to its own name.
    policy:
        Mesh policy file; the shipped one by default.
    """

    model_config = SettingsConfigDict(env_prefix="QUANTMESH_MESH_", extra="ignore")

    mode: MeshMode = "plaintext"
    pki: Path | None = None
    identity: str | None = None
    policy: Path | None = None


class MeshConfigError(RuntimeError):
    """The mesh settings cannot work; the message says which variable to set."""


@cache
def mesh_settings() -> MeshSettings:
    try:
        settings = MeshSettings()
    except ValidationError as error:
        raise MeshConfigError(f"invalid QUANTMESH_MESH_* settings: {error}") from None
    if settings.mode == "direct" and settings.pki is None:
        raise MeshConfigError("QUANTMESH_MESH_MODE=direct needs QUANTMESH_MESH_PKI (a PKI folder)")
    return settings


def set_identity(service: str) -> None:
    """Make ``service`` the identity of this process unless one is configured."""
    os.environ.setdefault("QUANTMESH_MESH_IDENTITY", service)
    mesh_settings.cache_clear()


def _identity(settings: MeshSettings) -> str:
    if settings.identity is None:
        raise MeshConfigError("QUANTMESH_MESH_MODE=direct needs QUANTMESH_MESH_IDENTITY")
    return settings.identity


def open_channel(address: str, peer: str) -> grpc.aio.Channel:
    """A channel to ``peer`` (a service name) at ``address``, secured as the mesh says."""
    settings = mesh_settings()
    # RPC client spans that carry the current trace context in metadata.
    interceptors = tracing.client_interceptors()
    if settings.mode == "plaintext":
        return grpc.aio.insecure_channel(address, interceptors=interceptors or None)
    assert settings.pki is not None
    return peer_channel(address, settings.pki, _identity(settings), peer, interceptors)


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor[Any, Any]]:
    """The policy check in ``direct`` mode (Envoy's RBAC does it otherwise)."""
    settings = mesh_settings()
    if settings.mode == "plaintext":
        return ()
    return (PolicyAuthorization(load_policy(settings.policy)),)


def add_port(server: grpc.aio.Server, address: str) -> int:
    """Bind ``address`` on ``server``: plaintext, or mutual TLS in ``direct`` mode."""
    settings = mesh_settings()
    if settings.mode == "plaintext":
        return server.add_insecure_port(address)
    assert settings.pki is not None
    credentials = rotating_server_credentials(settings.pki, _identity(settings))
    return server.add_secure_port(address, credentials)


def rotating_server_credentials(pki: Path, identity: str) -> grpc.ServerCredentials:
    """Server mTLS whose certificate is re-read when ``quantmesh pki rotate`` replaces it."""
    folder = pki / identity
    files = [folder / KEY_FILE, folder / CERT_FILE, folder / TRUST_BUNDLE_FILE]

    def stamp() -> tuple[int, ...]:
        return tuple(path.stat().st_mtime_ns for path in files)

    def configuration() -> Any:
        key, certificate, trust = (path.read_bytes() for path in files)
        return grpc.ssl_server_certificate_configuration(
            [(key, certificate)], root_certificates=trust
        )

    loaded = [stamp()]

    def fetch() -> Any:
        # Called by gRPC before each handshake: None keeps the current certificate.
        try:
            current = stamp()
            if current == loaded[0]:
                return None
            fresh = configuration()
        except OSError:  # mid-rotation: keep serving with the certificate we have
            return None
        loaded[0] = current
        return fresh

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=True
    )
