"""splitpoint edge runtime: run a bundle's prefix here and its suffix on a worker.

Importing this package loads only what a device needs: numpy, onnxruntime,
grpcio and the shared core (no onnx, torch or matplotlib).
"""

from edge.runtime import EdgeRuntime
from edge.trace import Counters, Trace

__all__ = ["EdgeRuntime", "Trace", "Counters"]
