"""splitpoint cloud worker: serves bundles' cloud segments over the Open Inference Protocol."""

from cloud.server import Worker, serve

__all__ = ["Worker", "serve"]
