"""The mesh policy (``mesh/policy.yaml``): loaded, checked against the contracts, queried.

The policy is the single source of truth for the mesh: each service's ports, the peers it
calls, and which SPIFFE identities may call which of its gRPC methods. Loading it checks
everything a typo could break (an unknown service, caller or method, a port used twice,
a call the callee does not grant), so a bad policy fails before any proxy starts.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Iterator, Mapping
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Modules whose import registers every service the mesh can route (the contracts).
CONTRACT_MODULES = (
    "quantmesh.marketdata.v1.marketdata_pb2",
    "quantmesh.features.v1.features_pb2",
    "quantmesh.inference.v1.inference_pb2",
    "quantmesh.inference.v1.open_inference_pb2",
    "quantmesh.registry.v1.registry_pb2",
    "quantmesh.decision.v1.decision_pb2",
    "quantmesh.risk.v1.risk_pb2",
    "quantmesh.execution.v1.execution_pb2",
    "quantmesh.analytics.v1.analytics_pb2",
    "quantmesh.tenancy.v1.tenancy_pb2",
    "quantmesh.audit.v1.audit_pb2",
    "grpc_health.v1.health_pb2",
    "grpc_reflection.v1alpha.reflection_pb2",
)


class PolicyError(ValueError):
    """The policy file is malformed or inconsistent; the message names what and where."""


class ServicePolicy(BaseModel):
    """One service: where it listens, whom it calls, who may call which method."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(ge=1, le=65535, description="Loopback port of the service itself.")
    mesh_port: int = Field(ge=1, le=65535, description="Port of its proxy's inbound listener.")
    calls: tuple[str, ...] = ()
    grants: dict[str, tuple[str, ...]] = Field(default_factory=dict)


class EdgePolicy(BaseModel):
    """The edge listener: where external clients connect, and which identities may."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(ge=1, le=65535, description="Port of the public TLS listener.")
    clients: tuple[str, ...] = Field(min_length=1, description="External identities admitted.")


class MeshPolicy(BaseModel):
    """The whole policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trust_domain: str = Field(pattern=r"^[a-z0-9.-]+$")
    external: dict[str, str] = Field(default_factory=dict)
    everyone: tuple[str, ...] = ()
    services: dict[str, ServicePolicy]
    edge: EdgePolicy

    @model_validator(mode="after")
    def _consistent(self) -> MeshPolicy:
        problems = list(_problems(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def spiffe_id(self, identity: str) -> str:
        """The SPIFFE id of a service or external identity."""
        return f"spiffe://{self.trust_domain}/{identity}"

    @cached_property
    def identities(self) -> tuple[str, ...]:
        """Every identity of the mesh: services, then external callers."""
        return (*self.services, *self.external)

    def allowed(self, caller: str, full_method: str) -> bool:
        """May ``caller`` (a name, not a SPIFFE id) call ``full_method``?

        ``full_method`` is ``package.Service/Method`` or gRPC's ``/package.Service/Method``;
        health and reflection are open to every identity of the mesh.
        """
        method = full_method.lstrip("/")
        if caller not in self.identities:
            return False
        if any(fnmatch.fnmatchcase(method, pattern) for pattern in self.everyone):
            return True
        return any(
            fnmatch.fnmatchcase(method, pattern) and caller in callers
            for service in self.services.values()
            for pattern, callers in service.grants.items()
        )

    def grants_of(self, service: str) -> Iterator[tuple[str, tuple[str, ...]]]:
        """``(method pattern, callers)`` of one service, the shared grants included."""
        for pattern in self.everyone:
            yield pattern, self.identities
        yield from self.services[service].grants.items()


def default_policy_path() -> Path:
    """The policy shipped with quantmesh (``mesh/policy.yaml``)."""
    return Path(str(resources.files("quantmesh.mesh") / "policy.yaml"))


def load_policy(path: Path | None = None) -> MeshPolicy:
    """Read and check a policy file (the shipped one by default).

    Raises
    ------
    PolicyError
        Naming the file and every problem found.
    """
    path = path or default_policy_path()
    try:
        document: Any = yaml.safe_load(path.read_text("utf-8"))
        if not isinstance(document, Mapping):
            raise PolicyError(f"{path}: the top level must be a mapping")
        return MeshPolicy.model_validate(document)
    except (OSError, yaml.YAMLError) as error:
        raise PolicyError(f"{path}: {error}") from None
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'policy'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise PolicyError(f"{path}: {details}") from None


@cache
def contract_methods() -> frozenset[str]:
    """``package.Service/Method`` of every gRPC method in the contracts."""
    methods: set[str] = set()
    for module in CONTRACT_MODULES:
        file = importlib.import_module(module).DESCRIPTOR
        for service in file.services_by_name.values():
            methods.update(f"{service.full_name}/{method.name}" for method in service.methods)
    return frozenset(methods)


def _problems(policy: MeshPolicy) -> Iterator[str]:
    known = contract_methods()
    identities = {*policy.services, *policy.external}
    clash = set(policy.services) & set(policy.external)
    if clash:
        yield f"{sorted(clash)} are both services and external identities"
    ports: dict[int, str] = {}
    for name, service in policy.services.items():
        for kind, port in (("port", service.port), ("mesh_port", service.mesh_port)):
            if port in ports:
                yield f"{name}.{kind} {port} is already {ports[port]}"
            ports[port] = f"{name}.{kind}"
        for peer in service.calls:
            if peer not in policy.services:
                yield f"{name} calls unknown service {peer!r}"
            elif not any(name in callers for callers in policy.services[peer].grants.values()):
                yield f"{name} calls {peer}, but {peer} grants {name} no method"
        for pattern, callers in service.grants.items():
            if not any(fnmatch.fnmatchcase(method, pattern) for method in known):
                yield f"{name} grants {pattern!r}, which matches no method of the contracts"
            for caller in callers:
                if caller not in identities:
                    yield f"{name} grants {pattern!r} to unknown identity {caller!r}"
                elif caller in policy.services and name not in policy.services[caller].calls:
                    yield f"{name} grants {pattern!r} to {caller}, which does not call {name}"
    if "edge" not in policy.external:
        yield "the edge listener needs `edge` among the external identities"
    for client in policy.edge.clients:
        if client not in policy.external or client == "edge":
            yield f"edge client {client!r} is not an external identity (add it to `external`)"
    if policy.edge.port in ports:
        yield f"edge.port {policy.edge.port} is already {ports[policy.edge.port]}"
    for pattern in policy.everyone:
        if not any(fnmatch.fnmatchcase(method, pattern) for method in known):
            yield f"everyone is granted {pattern!r}, which matches no method of the contracts"
