"""Element type, shape and byte size of TFLite tensors, as the first golden input makes them.

Sizes are measured, not read from the file: a tensor's static shape is only
its default, and dynamic dimensions take their size from the inputs. One run
of the model with the tensors of interest added to its outputs gives them all.
Shapes in manifests keep dynamic dimensions (-1 in the shape signature) unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from onnx import TensorProto, helper

from partitioner.measure import TensorFacts, TensorTable
from partitioner.tflite.flatbuffer import numpy_name
from partitioner.tflite.source import TfliteSource
from partitioner.tflite.view import MAIN, symbolic_shape


def measure(source: TfliteSource, names: Iterable[str], computed: Mapping[str, np.ndarray]) -> TensorTable:
    """Facts for ``names`` (main-subgraph tensors); ``computed`` holds the first golden input and outputs."""
    main = source.model.subgraphs[MAIN]
    names = list(dict.fromkeys(names))
    sendable = [n for n in names if numpy_name(main.tensors[source.index(n)].type) is not None]
    values = dict(computed)
    values.update(source.values([n for n in sendable if n not in values], computed))
    facts = {}
    for name in names:
        tensor = main.tensors[source.index(name)]
        value = values.get(name)
        if value is None:  # a type splitpoint cannot carry; TensorTable.spec says so when asked
            facts[name] = TensorFacts(TensorProto.UNDEFINED, tuple(symbolic_shape(tensor)), 0)
            continue
        elem_type = helper.np_dtype_to_tensor_dtype(value.dtype)
        facts[name] = TensorFacts(elem_type, tuple(symbolic_shape(tensor)), math.prod(value.shape) * value.itemsize)
    return TensorTable(facts, {})

