"""Golden cases: seeded random inputs and the full model's outputs on them.

They are checked at every stage (verification here, the edge and the cloud
later), so they are reproducible: case k always draws from seed k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from partitioner.errors import PartitionError
from splitpoint.bundle import GoldenCase

Tensors = dict[str, np.ndarray]
GOLDEN_DIR = "golden"


def sample_inputs(
    inputs: Sequence[onnx.ValueInfoProto], shapes: Mapping[str, tuple[int, ...]], case: int
) -> Tensors:
    """Inputs for golden case ``case``: floats ~ N(0, 1), integers 0 or 1, random booleans.

    Integers are 0 or 1, the values an attention mask, a flag or an index
    takes: a mask of 9 where the model expects 0/1 adds 8e4 to scores of
    order 1, and two correct runtimes then round far apart
    (``benchmarks/runtime_drift.md``), which verification would take for a
    wrong split.
    """
    rng = np.random.default_rng(case)
    sample: Tensors = {}
    for vi in inputs:
        elem_type = vi.type.tensor_type.elem_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
        except KeyError:
            dtype = np.dtype(object)
        shape = shapes[vi.name]
        if dtype == np.bool_:
            values = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            values = rng.integers(0, 2, shape)
        elif dtype.kind == "f" or dtype.name == "bfloat16":
            values = rng.standard_normal(shape)
        else:
            type_name = onnx.TensorProto.DataType.Name(elem_type)
            raise PartitionError(f"input {vi.name!r} has element type {type_name}; splitpoint cannot make inputs for it")
        sample[vi.name] = np.asarray(values).astype(dtype)  # rng returns Python scalars for shape ()
    return sample


def write_golden(root: Path, cases: Sequence[tuple[Tensors, Tensors]]) -> tuple[GoldenCase, ...]:
    """Save each (inputs, outputs) pair as npz under ``root/golden``; paths relative to ``root``."""
    (root / GOLDEN_DIR).mkdir(exist_ok=True)
    written = []
    for k, (inputs, outputs) in enumerate(cases):
        case = GoldenCase(inputs=f"{GOLDEN_DIR}/inputs_{k}.npz", outputs=f"{GOLDEN_DIR}/outputs_{k}.npz")
        np.savez(root / case.inputs, **inputs)
        np.savez(root / case.outputs, **outputs)
        written.append(case)
    return tuple(written)
