"""The benchmark suite behind ``quantmesh bench``: every performance figure we state."""
