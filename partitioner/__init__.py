"""The partitioner: cut an ONNX model into an edge prefix and a cloud suffix, and bundle it.

``from_torch`` exports a PyTorch module to ONNX with names that follow module
paths; ``split_torch`` splits a module and adds PyTorch segments to the bundle.
``inspect`` lists the candidate cuts with the bytes each would send; ``split``
writes a verified bundle (see ``splitpoint.bundle``); ``profile`` measures a
model's per-node latency on this machine; ``plan`` predicts the best split per
network link from an edge and a cloud profile (objectives and constraints
below). Everything else in this package is implementation.
"""

from partitioner.bundler import split
from partitioner.candidates import Candidate, InspectReport, inspect
from partitioner.errors import PartitionError
from partitioner.objectives import Objective, PowerProfile, cloud_compute, edge_energy, latency
from partitioner.plan import Plan, plan
from partitioner.profile import Profile, profile
from partitioner.pytorch import from_torch
from partitioner.search import Constraints
from partitioner.shapes import parse_shapes
from partitioner.torch_segments import split_torch

__all__ = [
    "Candidate",
    "Constraints",
    "InspectReport",
    "Objective",
    "PartitionError",
    "Plan",
    "PowerProfile",
    "Profile",
    "cloud_compute",
    "edge_energy",
    "from_torch",
    "inspect",
    "latency",
    "parse_shapes",
    "plan",
    "profile",
    "split",
    "split_torch",
]
