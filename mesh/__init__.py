"""The zero-trust mesh: the policy, the PKI, Envoy's configurations and proxyless mTLS.

``policy.yaml`` says who runs where and who may call what; ``pki`` issues SPIFFE
certificates; ``envoy`` renders every sidecar and the edge from the policy;
``transport`` secures a service's own traffic (plaintext behind its sidecar, or
proxyless mutual TLS with ``direct``'s policy check); ``launcher`` runs it all locally.
"""
