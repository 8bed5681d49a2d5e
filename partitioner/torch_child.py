"""The subprocess that exports a ``FILE.py:FACTORY`` module for the CLI (see ``partitioner.pytorch.export_factory``).

``python -m partitioner.torch_child FILE FACTORY OUT --example-shape D0,D1,...[:DTYPE] [--dynamo] [--program]``
imports FILE, calls FACTORY(), puts the module in eval mode and writes OUT (and
with ``--program`` its torch.export program, see ``partitioner.pytorch.program_file``).
Failures are one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from partitioner.errors import PartitionError
from partitioner.pytorch import from_torch, import_torch, parse_example_shape, program_file
from partitioner.torch_segments import export_program
from splitpoint.errors import first_line


def load_factory(file: Path, name: str) -> Any:
    """``name`` from the Python file ``file``, imported with its directory on the path (for its own imports)."""
    sys.path.insert(0, str(file.resolve().parent))
    spec = importlib.util.spec_from_file_location(f"splitpoint_factory_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise PartitionError(f"{file}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # whatever the user's module raises while importing
        raise PartitionError(f"{file}: importing it failed: {type(e).__name__}: {first_line(e)}") from None
    if not hasattr(module, name):
        close = difflib.get_close_matches(name, [n for n in vars(module) if not n.startswith("_")], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise PartitionError(f"{file} has no factory {name!r}{hint}")
    factory = getattr(module, name)
    if not callable(factory):
        raise PartitionError(f"{file}:{name} is not callable ({type(factory).__name__}); "
                             "name a function returning a torch.nn.Module")
    return factory


def make_module(file: Path, name: str) -> Any:
    """The torch.nn.Module ``FILE:FACTORY()`` returns; one-line errors for anything else."""
    torch = import_torch()
    factory = load_factory(file, name)
    try:
        module = factory()
    except Exception as e:  # whatever the user's factory raises
        raise PartitionError(f"{file}:{name}() failed: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(module, torch.nn.Module):
        raise PartitionError(f"{file}:{name}() returned {type(module).__name__}, not a torch.nn.Module")
    return module


def export(file: Path, name: str, out: Path, example_shapes: list[str], dynamo: bool, program: bool = False) -> None:
    """Write OUT (ONNX) and, with ``program``, the same module instance as a torch.export program beside it."""
    torch = import_torch()
    shapes = [parse_example_shape(s) for s in example_shapes]
    module = make_module(file, name)
    examples = [(torch.randn(shape) if dtype.startswith(("float", "bfloat")) else torch.ones(shape)).to(getattr(torch, dtype))
                for shape, dtype in shapes]  # ones: valid token ids and attention masks
    from_torch(module.eval(), examples, dynamo=dynamo, path=out)
    if program:
        torch.export.save(export_program(module, examples), str(program_file(out)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m partitioner.torch_child")
    p.add_argument("file", type=Path)
    p.add_argument("factory")
    p.add_argument("out", type=Path)
    p.add_argument("--example-shape", action="append", default=[])
    p.add_argument("--dynamo", action="store_true")
    p.add_argument("--program", action="store_true", help="also save the module as a torch.export program")
    args = p.parse_args(argv)
    try:
        export(args.file, args.factory, args.out, args.example_shape, args.dynamo, args.program)
    except PartitionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
