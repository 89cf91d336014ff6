"""Market data service: tick sources, their domain types, and the gRPC adapter."""
