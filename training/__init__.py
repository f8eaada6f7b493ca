"""Training pipeline: data -> baselines -> train -> export ONNX -> gate -> registry (torch lives here)."""
