"""quantmesh services: each one a pure domain core plus a thin grpc.aio adapter."""
