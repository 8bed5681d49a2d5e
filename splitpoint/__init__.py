"""splitpoint: hybrid edge-cloud split inference.

The public API lives in the wings, each importable on its own:
``edge.EdgeRuntime`` (device), ``cloud.serve`` (worker) and
``partitioner.split`` / ``partitioner.inspect`` (operators). This core package
holds what they share: the tensor codec, wire conversions, bundle format and
runtime backends.
"""

__version__ = "0.1.0"
