"""The service runtime every quantmesh service shares: config, logging and the grpc.aio server.

Import from the modules (``quantmesh.runtime.server``, ``.config``, …): this package
imports nothing, so the mesh can use its logging without a cycle through the server.
"""
