"""The ``splitpoint`` command.

Each subcommand imports the wing it needs inside its handler, so ``splitpoint
serve`` never loads the partitioner and ``splitpoint infer`` never loads onnx.
Errors a user can fix are printed as one ``error:`` line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from splitpoint import __version__
from splitpoint.bundle import DEFAULT_CODEC
from splitpoint.codec import available as codec_names
from splitpoint.errors import SplitpointError

CODECS = codec_names()
SHAPE_HELP = "shape for a dynamic input, NAME=D0,D1,... (repeatable), used for golden inputs and sizes"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from partitioner import inspect, parse_shapes

    print(inspect(args.model, parse_shapes(args.shape)).to_text())
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from partitioner import parse_shapes, split

    at = "auto" if args.at in (None, ["auto"]) else [a.split(",") for a in args.at]
    bundle = split(
        args.model,
        args.output,
        at=at,
        shapes=parse_shapes(args.shape),
        name=args.name,
        codec=args.codec,
        overwrite=args.force,
        log=print,
    )
    print(f"wrote bundle {bundle.root} with splits: {', '.join(s.id for s in bundle.manifest.splits)}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from cloud import serve

    serve(
        args.bundles,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_workers=args.max_workers,
        max_message_bytes=args.max_message_mb << 20,
    )
    return 0


def _load_inputs(path: Path, input_names: list[str]) -> dict:
    import numpy as np

    if not path.is_file():
        raise SplitpointError(f"--input {path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SplitpointError(f"--input {path}: not a .npy/.npz file ({e})") from None
    if isinstance(data, np.ndarray):
        if len(input_names) != 1:
            raise SplitpointError(f"--input {path}: the model has inputs {input_names}; give an .npz with those names")
        return {input_names[0]: data}
    with data:
        return {k: data[k] for k in data.files}


def _cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from edge import EdgeRuntime

    split = args.split or (None if args.cloud else "local")
    with EdgeRuntime(args.bundle, cloud=args.cloud, split=split, deadline_ms=args.deadline_ms, codec=args.codec) as rt:
        inputs = _load_inputs(Path(args.input), [s.name for s in rt.bundle.manifest.inputs])
        outputs = rt.infer(inputs)
        trace = rt.last_trace
    if args.output:
        np.savez(args.output, **outputs)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}" + ("" if args.output else f"\n{value}"))
    print(json.dumps(trace.as_dict() if trace else {}, indent=None))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from testbed.demo import run_demo

    return run_demo(requests=args.requests, workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="splitpoint",
        description="Split a neural network between an edge device and a cloud worker.",
    )
    p.add_argument("--version", action="version", version=f"splitpoint {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="list a model's inputs, outputs and candidate cuts")
    s.add_argument("model", help="ONNX model file (external .onnx.data beside it is read too)")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP)
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("split", help="cut a model and write a verified bundle")
    s.add_argument("model", help="ONNX model file")
    s.add_argument("-o", "--output", required=True, help="bundle directory to write")
    s.add_argument(
        "--at",
        action="append",
        metavar="NAME[,NAME...]",
        help="tensors to cut at (one split per --at; several names make a multi-tensor cut), "
        "or 'auto': the fewest bytes crossing with at least a third of the nodes on each side (default)",
    )
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP)
    s.add_argument("--name", help="bundle/model name (default: the model file's stem)")
    s.add_argument(
        "--codec",
        default=DEFAULT_CODEC,
        help=f"codec for the cut tensors (default: {DEFAULT_CODEC}); one of: {', '.join(CODECS)}, "
        "zstd levels as zstd:N",
    )
    s.add_argument("-f", "--force", action="store_true", help="replace an existing bundle directory")
    s.set_defaults(func=_cmd_split)

    s = sub.add_parser("serve", help="serve the cloud segments of bundles over gRPC (Open Inference Protocol)")
    s.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8500, help="port (default: 8500; 0 picks a free one)")
    s.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads per model")
    s.add_argument("--max-workers", type=int, default=8, help="concurrent requests (default: 8)")
    s.add_argument("--max-message-mb", type=int, default=512, help="gRPC message size limit in MiB (default: 512)")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("infer", help="run a bundle once on the edge, splitting with a worker if given")
    s.add_argument("bundle", help="bundle directory")
    s.add_argument("--cloud", help="worker address HOST:PORT (omit to run locally)")
    s.add_argument("--input", required=True, help=".npy (single-input model) or .npz keyed by input name")
    s.add_argument("--output", help="write outputs to this .npz")
    s.add_argument("--split", help="split id, 'local' or 'cloud' (default: the bundle's default)")
    s.add_argument("--deadline-ms", type=float, default=1000.0, help="latency budget for the worker path")
    s.add_argument("--codec", help="codec for the cut tensors (default: the bundle's)")
    s.set_defaults(func=_cmd_infer)

    s = sub.add_parser("demo", help="split a small CNN, serve it, kill and restart the worker, print a table")
    s.add_argument("--requests", type=int, default=40, help="requests per phase (default: 40)")
    s.add_argument("--workdir", help="where to write the demo model and bundle (default: a temp dir)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except SplitpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
