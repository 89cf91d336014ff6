"""Trainer: walk-forward torch training of direction models, ONNX export, registration."""
