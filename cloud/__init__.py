"""splitpoint cloud worker: serves bundles' cloud segments over the Open Inference Protocol."""

from cloud.core import Batching
from cloud.repository import SessionSettings
from cloud.server import Worker, serve

__all__ = ["Batching", "SessionSettings", "Worker", "serve"]
