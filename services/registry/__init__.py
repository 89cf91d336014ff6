"""Model registry: versioned ONNX artifacts with metrics, data range, schema and aliases."""
