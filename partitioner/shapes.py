"""Concrete input shapes: from ``--shape NAME=1,3,640,640``, or a dynamic batch defaulted to 1.

Sizes are measured on real inputs, so every dynamic input dimension needs a
value. Only a leading (batch) dimension has an obvious default.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence

import onnx

from partitioner.errors import PartitionError


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=D0,D1,...`` strings (the CLI's ``--shape``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, eq, dims = item.rpartition("=")
        name = name.strip()
        if not eq or not name:
            raise PartitionError(f"--shape {item!r}: expected NAME=D0,D1,... (e.g. image=1,3,640,640)")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise PartitionError(f"--shape {item!r}: dimensions must be integers separated by commas") from None
        if any(d < 0 for d in shape):
            raise PartitionError(f"--shape {item!r}: dimensions must not be negative")
        if name in shapes:
            raise PartitionError(f"--shape {item!r}: input {name!r} is given twice")
        shapes[name] = shape
    return shapes


def _declared(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared dims (int fixed, str symbolic, None unknown), or None when the rank is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def concrete_input_shapes(
    inputs: Sequence[onnx.ValueInfoProto],
    given: Mapping[str, Sequence[int]] | None,
    log: Callable[[str], None],
) -> dict[str, tuple[int, ...]]:
    """A fixed shape per graph input: ``given`` where set, else the declared one with batch 1."""
    given = dict(given or {})
    names = [vi.name for vi in inputs]
    for name in given:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; inputs are {', '.join(names)}"
            raise PartitionError(f"--shape {name}: the model has no input {name!r}{hint}")
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in inputs:
        declared = _declared(vi)
        if vi.name in given:
            shapes[vi.name] = _checked(vi.name, tuple(int(d) for d in given[vi.name]), declared)
            continue
        if declared is None:
            raise PartitionError(f"input {vi.name!r} has no declared shape; give it with --shape {vi.name}=D0,D1,...")
        dims: list[int] = []
        for axis, d in enumerate(declared):
            if isinstance(d, int):
                dims.append(d)
            elif axis == 0:
                log(f"input {vi.name!r}: dynamic dim 0 ({d or '?'}) set to 1 for measuring (use --shape to choose)")
                dims.append(1)
            else:
                example = ",".join("?" if x is None else str(x) for x in declared)
                raise PartitionError(
                    f"input {vi.name!r} dim {axis} ({d or '?'}) is dynamic; give its size with --shape {vi.name}={example}"
                )
        shapes[vi.name] = tuple(dims)
    return shapes


def _checked(name: str, shape: tuple[int, ...], declared: list[int | str | None] | None) -> tuple[int, ...]:
    if declared is None:
        return shape
    if len(shape) != len(declared):
        raise PartitionError(f"--shape {name}: {len(shape)} dims given, the input has {len(declared)}")
    for axis, (g, d) in enumerate(zip(shape, declared)):
        if isinstance(d, int) and g != d:
            raise PartitionError(f"--shape {name}: dim {axis} is fixed to {d} in the model, {g} was given")
    return shape
