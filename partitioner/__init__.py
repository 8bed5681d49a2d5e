"""The partitioner: cut an ONNX model into an edge prefix and a cloud suffix, and bundle it.

``inspect`` lists the candidate cuts with the bytes each would send; ``split``
writes a verified bundle (see ``splitpoint.bundle``). Everything else in this
package is implementation.
"""

from partitioner.bundler import split
from partitioner.candidates import Candidate, InspectReport, inspect
from partitioner.errors import PartitionError
from partitioner.shapes import parse_shapes

__all__ = ["Candidate", "InspectReport", "PartitionError", "inspect", "parse_shapes", "split"]
