"""Inference: ONNX Runtime serving of registry models (Open Inference Protocol + streaming)."""
