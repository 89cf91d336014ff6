"""The zero-trust mesh: Envoy config generation, the dev CA, SPIFFE ids and RBAC policy.

Empty until the mesh issue lands; services listen on loopback only until then.
"""
