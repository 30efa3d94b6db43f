"""Latency: timing (one timer), paired dense-vs-pruned measurement with intervals, backends (eager,
torch.compile, ONNX Runtime), the per-layer lookup table and the latency target with its measured correction.

Like ``harness.core``, it imports neither the application, a method nor a task.
"""
