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
from typing import TYPE_CHECKING

from splitpoint import __version__, defaults
from splitpoint.codec import available as codec_names
from splitpoint.errors import SplitpointError

if TYPE_CHECKING:  # the edge wing is imported only by the commands that use it
    from edge.client import ClientTLS

CODECS = codec_names()
SHAPE_HELP = "shape for a dynamic input, NAME=D0,D1,... (repeatable), used for golden inputs and sizes"
PLAN_LINKS = ["1mbit/60ms", "10mbit/30ms", "100mbit/5ms"]
PROFILE_HELP = "profile JSON written by `splitpoint profile` on the {where}"
MODEL_HELP = "ONNX model file (external .onnx.data beside it is read too), .tflite file, or a PyTorch module as FILE.py:FACTORY"


def _add_model(s: argparse.ArgumentParser, what: str = MODEL_HELP) -> None:
    """The model argument of inspect, split, plan and profile, with what a PyTorch module needs to be exported."""
    s.add_argument("model", help=what)
    s.add_argument("--example-shape", action="append", default=[], metavar="D0,D1,...[:DTYPE]",
                   help="for FILE.py:FACTORY: the shape (and dtype, default float32) of an example input to export "
                   "with, one per forward argument in order, e.g. 1,3,224,224 or 1,128:int64")
    s.add_argument("--dynamo", action="store_true",
                   help="for FILE.py:FACTORY: export with torch's dynamo exporter (default: the legacy one; "
                   "both name tensors by module path)")


def _add_calibration(s: argparse.ArgumentParser) -> None:
    """Checking a lossy codec on calibration inputs (plan and split)."""
    s.add_argument("--calibration", metavar="FILE.npz",
                   help="input samples keyed by input name, N along the first axis: each split runs through the codec "
                   "on them and one that answers unlike the full model is not offered (see --min-agreement)")
    s.add_argument("--min-agreement", type=float, default=0.99, metavar="X",
                   help="with --calibration: the least top-1 agreement with the full model, over classifier-like "
                   "outputs (2-D float [N, C]) (default: 0.99)")
    s.add_argument("--max-rel-error", type=float, metavar="X",
                   help="with --calibration: the largest error of any output relative to its largest magnitude "
                   "(default: none)")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from partitioner import inspect, parse_shapes
    from partitioner.pytorch import model_file

    with model_file(args.model, args.example_shape, args.dynamo, _progress) as model:
        print(inspect(model, parse_shapes(args.shape)).to_text())
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from partitioner import parse_shapes, split
    from partitioner.pytorch import is_factory, model_file, program_file
    from partitioner.torch_segments import segments_from_file

    torch_segments = is_factory(args.model) and not args.no_torch_segments
    if args.at is None:
        at = None if args.candidates else "auto"
    else:
        at = "auto" if args.at == ["auto"] else [a.split(",") for a in args.at]
    with model_file(args.model, args.example_shape, args.dynamo, print, program=torch_segments) as model:
        bundle = split(
            model,
            args.output,
            at=at,
            shapes=parse_shapes(args.shape),
            name=args.name,
            codec=args.codec,
            overwrite=args.force,
            log=print,
            candidates=args.candidates,
            edge_profile=args.edge_profile,
            cloud_profile=args.cloud_profile,
            rtt_ms=args.rtt_ms,
            calibration=args.calibration,
            min_agreement=args.min_agreement,
            max_rel_error=args.max_rel_error,
            finish=segments_from_file(program_file(model), print) if torch_segments else None,
        )
    print(f"wrote bundle {bundle.root} with splits: {', '.join(s.id for s in bundle.manifest.splits)}")
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmd_profile(args: argparse.Namespace) -> int:
    from partitioner import parse_shapes, profile

    p = profile(args.model, backend=args.backend, threads=args.threads, runs=args.runs, warmup=args.warmup,
                shapes=parse_shapes(args.shape), log=_progress, example_shapes=args.example_shape, dynamo=args.dynamo)
    p.save(args.output)
    print(f"wrote {args.output}: {p.summary()}")
    for n in sorted(p.nodes.values(), key=lambda n: -n.ms)[:5]:
        print(f"  {n.ms:9.3f} ms  {n.key} ({n.op_type})")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from partitioner import Constraints, PowerProfile, edge_energy, parse_shapes, plan
    from partitioner.pytorch import model_file

    objective = edge_energy(PowerProfile.parse(args.power)) if args.objective == "energy" else args.objective
    constraints = Constraints(args.min_edge_ops, args.no_raw_inputs, args.edge_memory_mb)
    with model_file(args.model, args.example_shape, args.dynamo, _progress) as model:
        result = plan(model, args.link or PLAN_LINKS, args.edge_profile, args.cloud_profile, codec=args.codec,
                      objective=objective, constraints=constraints, shapes=parse_shapes(args.shape),
                      cloud_threads=args.cloud_threads, log=_progress, calibration=args.calibration,
                      min_agreement=args.min_agreement, max_rel_error=args.max_rel_error)
    print(result.to_text())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_json(), indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from partitioner.plot import plot_plan

        print(f"wrote {plot_plan(result, args.plot)}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:

    from cloud import Batching, SessionSettings, serve
    from cloud.logs import use_json_logs
    from splitpoint.credentials import token_from

    if args.log_format == "json":
        use_json_logs()
    token = token_from(args.token_file)
    providers = None if args.providers == "auto" else tuple(p.strip() for p in args.providers.split(",") if p.strip())
    serve(
        args.bundles,
        host=args.host,
        port=args.port,
        session=SessionSettings(args.threads, args.graph_opt, providers),
        batching=Batching(args.max_batch, args.batch_delay_ms / 1e3) if args.max_batch != 1 else None,
        max_inflight=args.max_inflight,
        max_queue=args.max_queue,
        max_message_bytes=args.max_message_mb << 20,
        max_decoded_bytes=args.max_decoded_mb << 20,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token=token,
        metrics_port=args.metrics_port,
        grace_s=args.grace_s,
    )
    return 0


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from cloud.triton import export_triton

    delay_us = None if args.batch_delay_ms is None else round(args.batch_delay_ms * 1e3)
    for e in export_triton(args.bundle, args.output, args.max_batch, delay_us, overwrite=args.force):
        batching = f"max_batch_size {e.max_batch_size}" if e.max_batch_size else "no batch dimension: max_batch_size 0"
        print(f"wrote {e.directory} ({batching})")
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
    from splitpoint.credentials import token_from

    split = args.split or (None if args.cloud else "local")
    with EdgeRuntime(args.bundle, cloud=args.cloud, split=split, deadline_ms=args.deadline_ms, codec=args.codec,
                     tls=_client_tls(args), token=token_from(args.token_file)) as rt:
        inputs = _load_inputs(Path(args.input), [s.name for s in rt.bundle.manifest.inputs])
        outputs = rt.infer(inputs)
        trace = rt.last_trace
    if args.output:
        np.savez(args.output, **outputs)
    for name, value in outputs.items():
        print(f"{name}: {value.dtype} {list(value.shape)}" + ("" if args.output else f"\n{value}"))
    print(json.dumps(trace.as_dict() if trace else {}, indent=None))
    return 0


def _client_tls(args: argparse.Namespace) -> ClientTLS | None:
    """The edge.client.ClientTLS the --tls-* flags ask for, or None for plaintext."""
    from edge.client import ClientTLS

    if not (args.tls_ca or args.tls_cert):
        return None
    return ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def _add_client_tls(s: argparse.ArgumentParser) -> None:
    s.add_argument("--tls-ca", metavar="FILE", help="PEM CA that signed the worker's certificate: turns TLS on")
    s.add_argument("--tls-cert", metavar="FILE", help="this client's PEM certificate, for workers that require mutual TLS")
    s.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    s.add_argument("--tls-server-name", metavar="NAME", help="name to check in the worker's certificate")


def _cmd_health(args: argparse.Namespace) -> int:
    from edge.client import WorkerClient

    client = WorkerClient(args.address, tls=_client_tls(args))
    try:
        serving = client.serving(args.service, timeout=args.timeout)
    finally:
        client.close()
    what = f"service {args.service!r}" if args.service else "the worker"
    print(f"{args.address}: {what} is {'SERVING' if serving else 'not serving (down, loading, draining or unknown)'}")
    return 0 if serving else 1


def _cmd_bench_backends(args: argparse.Namespace) -> int:
    from edge.bench import bench, format_table
    from partitioner import parse_shapes

    results = bench(args.models, parse_shapes(args.shape), threads=args.threads, runs=args.runs,
                    rounds=args.rounds, warmup=args.warmup)
    print(format_table(results))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    from testbed.bench import format_report, parse_links, plot, run_bench

    links = parse_links(args.link)  # a bad --link fails before the worker starts
    result = run_bench(args.bundle, links, edge_cpu=None if args.edge_cpu == 0 else args.edge_cpu,
                       requests=args.requests, warmup=args.warmup, codec=args.codec, threads=args.threads,
                       worker_threads=args.worker_threads, share_weights=args.share_weights,
                       command=shlex.join(["splitpoint", *sys.argv[1:]]),
                       log=_progress)
    print(format_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")
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
    _add_model(s)
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP)
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("split", help="cut a model and write a verified bundle")
    _add_model(s)
    s.add_argument("-o", "--output", required=True, help="bundle directory to write")
    s.add_argument(
        "--at",
        action="append",
        metavar="NAME[,NAME...]",
        help="tensors to cut at (one split per --at; several names make a multi-tensor cut), "
        "or 'auto': the fewest bytes crossing with at least a third of the nodes on each side "
        "(default, unless --candidates is given)",
    )
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP)
    s.add_argument("--name", help="bundle/model name (default: the model file's stem)")
    s.add_argument(
        "--codec",
        default=defaults.CODEC,
        help=f"codec for the cut tensors (default: {defaults.CODEC}); one of: {', '.join(CODECS)}, "
        "zstd levels as zstd:N",
    )
    s.add_argument("-f", "--force", action="store_true", help="replace an existing bundle directory")
    s.add_argument(
        "--candidates",
        choices=["auto"],
        help="'auto': add every split that is the fastest for some bandwidth from 0.1 to 1000 Mbit/s, with "
        "predicted costs in the manifest so the edge can switch splits at run time (without --at: only those)",
    )
    s.add_argument("--edge-profile", metavar="FILE", help=PROFILE_HELP.format(where="device") + ": every split gets "
                   "predicted costs (with --candidates or --cloud-profile and no --edge-profile, this machine is profiled)")
    s.add_argument("--cloud-profile", metavar="FILE", help=PROFILE_HELP.format(where="server") + ": every split gets "
                   "predicted costs (with --candidates or --edge-profile and no --cloud-profile, this machine is profiled)")
    s.add_argument("--rtt-ms", type=float, default=20.0,
                   help="round-trip time the --candidates auto bandwidth sweep assumes (default: 20)")
    _add_calibration(s)
    s.add_argument("--no-torch-segments", action="store_true",
                   help="for FILE.py:FACTORY: write ONNX segments only (by default each split is also cut from the "
                   "module's own graph into PyTorch segments, checked against the ONNX ones, for "
                   "EdgeRuntime(backend='torch'))")
    s.set_defaults(func=_cmd_split)

    s = sub.add_parser("profile", help="measure a model's per-node latency on this machine")
    _add_model(s, "ONNX or .tflite model file, or a PyTorch module as FILE.py:FACTORY (profiled as its ONNX export)")
    s.add_argument("-o", "--output", required=True, help="profile JSON to write")
    s.add_argument("--backend", choices=["onnxruntime", "litert", "torch"],
                   help="runtime to profile with (default: the model's own: onnxruntime for ONNX and PyTorch "
                   "modules, litert for .tflite; torch: the module in PyTorch, on the nodes of its ONNX export)")
    s.add_argument("--threads", type=int, required=True,
                   help="intra-op threads, as the device or worker will run the model (e.g. 1 on a phone)")
    s.add_argument("--runs", type=int, default=20, help="timed runs; node times are their medians (default: 20)")
    s.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP)
    s.set_defaults(func=_cmd_profile)

    s = sub.add_parser("plan", help="predict the best split per network link from edge and cloud profiles")
    _add_model(s)
    s.add_argument("--edge-profile", metavar="FILE",
                   help=PROFILE_HELP.format(where="device") + " (default: profile this machine with 1 thread)")
    s.add_argument("--cloud-profile", metavar="FILE",
                   help=PROFILE_HELP.format(where="server") + " (default: profile this machine with --cloud-threads)")
    s.add_argument("--cloud-threads", type=int, metavar="N",
                   help="threads when the cloud is profiled on this machine (default: every core)")
    s.add_argument("--link", action="append", metavar="BANDWIDTH/RTT",
                   help="a network link such as 10mbit/30ms (kbit, mbit, gbit; ms, s); repeatable "
                   f"(default: {' '.join(PLAN_LINKS)})")
    s.add_argument("--codec", default=defaults.CODEC,
                   help=f"codec for the cut tensors, measured on the real tensors (default: {defaults.CODEC})")
    s.add_argument("--objective", choices=["latency", "energy", "cloud"], default="latency",
                   help="what to minimise: end-to-end latency (default), the edge's energy (see --power) "
                   "or cloud compute time")
    s.add_argument("--power", default="",
                   help="edge power for --objective energy: compute=W,idle=W,radio=J_PER_BYTE "
                   "(default: compute=3,idle=0.5,radio=1e-7)")
    s.add_argument("--min-edge-ops", type=int, default=0, metavar="N",
                   help="privacy floor: the first N compute nodes (topological order) always run on the edge")
    s.add_argument("--no-raw-inputs", action="store_true", help="privacy: never send a graph input to the cloud")
    s.add_argument("--edge-memory-mb", type=float, metavar="MB",
                   help="edge memory ceiling: weights of the prefix plus its peak activations (estimated)")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help=SHAPE_HELP)
    s.add_argument("--json", metavar="FILE", help="also write the plan as JSON")
    s.add_argument("--plot", metavar="FILE", help="also draw the plan to a PNG (needs matplotlib: the plot extra)")
    _add_calibration(s)
    s.set_defaults(func=_cmd_plan)

    s = sub.add_parser(
        "serve", help="serve the cloud segments of bundles over gRPC (Open Inference Protocol)",
        description="Serve every cloud segment of the given bundles as an Open Inference Protocol model "
        "named BUNDLE_NAME.SPLIT_ID, with grpc.health.v1, until SIGTERM/SIGINT.",
    )
    s.add_argument("bundles", nargs="+", metavar="BUNDLE",
                   help="bundle directories, or directories of bundles (every subdirectory holding a manifest.json)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8500, help="port (default: 8500; 0 picks a free one)")
    s.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads per model session (default: onnxruntime's, one per core)")
    s.add_argument("--graph-opt", choices=["basic", "extended", "all"], default="all",
                   help="onnxruntime graph optimisation level of every session (default: all)")
    s.add_argument("--providers", default="auto", metavar="LIST",
                   help="onnxruntime execution providers in order of preference, e.g. cuda,cpu "
                   "(default: auto = CUDA when this onnxruntime has it, then CPU)")
    s.add_argument("--max-batch", type=int, default=1, metavar="N",
                   help="dynamic batching: run up to N rows of concurrent requests to one model at once, for models "
                   "whose tensors share a dynamic first dimension (default: 1 = off; see docs/platform.md)")
    s.add_argument("--batch-delay-ms", type=float, default=0.0, metavar="MS",
                   help="with --max-batch: how long the first request of a batch waits for more before it runs "
                   "(default: 0 = batch only what is already queued)")
    s.add_argument("--max-inflight", type=int, default=2, metavar="N",
                   help="executions (requests, or batches) computing at once, across models "
                   "(default: 2; onnxruntime releases the GIL)")
    s.add_argument("--max-queue", type=int, default=32, metavar="N",
                   help="requests waiting for a compute slot or their batch; past that RESOURCE_EXHAUSTED at once "
                   "(default: 32)")
    s.add_argument("--max-message-mb", type=int, default=512, metavar="MIB",
                   help="gRPC message size limit in MiB; a larger request gets RESOURCE_EXHAUSTED (default: 512)")
    s.add_argument("--max-decoded-mb", type=int, default=1024, metavar="MIB",
                   help="decoded size limit of one request's tensors in MiB; past it INVALID_ARGUMENT (default: 1024)")
    s.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) of the worker: serve TLS only")
    s.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert (unencrypted)")
    s.add_argument("--tls-client-ca", metavar="FILE",
                   help="PEM CA certificate(s): mutual TLS, clients without a certificate signed by it are refused")
    s.add_argument("--token-file", metavar="FILE",
                   help="file holding a bearer token every inference call must send as 'authorization: Bearer TOKEN' "
                   "(default: the SPLITPOINT_TOKEN environment variable; neither: no token check); "
                   "grpc.health.v1 stays open for probes")
    s.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; 0 picks a free port)")
    s.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text lines, or one JSON object per line for log collectors (default: text)")
    s.add_argument("--grace-s", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, seconds in-flight requests get to finish before they are cancelled (default: 5)")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser(
        "export-triton", help="write a bundle's cloud segments as a Triton model repository",
        description="Write each cloud segment of BUNDLE as REPO/MODEL/config.pbtxt and REPO/MODEL/1/model.onnx, "
        "MODEL being the name `splitpoint serve` gives it (BUNDLE_NAME.SPLIT_ID), so edges can use Triton "
        "(platform onnxruntime_onnx) instead of the worker unchanged. TFLite segments are refused: Triton has "
        "no standard TFLite backend.",
    )
    s.add_argument("bundle", help="bundle directory (ONNX segments)")
    s.add_argument("-o", "--output", required=True, metavar="REPO",
                   help="Triton model repository to write into (created if missing; other models in it are kept)")
    s.add_argument("--max-batch", type=int, default=32, metavar="N",
                   help="max_batch_size of segments whose tensors share a dynamic first dimension; larger requests "
                   "are refused by Triton (default: 32; 0 = no batch dimension, full dims)")
    s.add_argument("--batch-delay-ms", type=float, metavar="MS",
                   help="add dynamic_batching with this max_queue_delay to the batchable segments (default: none)")
    s.add_argument("-f", "--force", action="store_true", help="replace model directories that already exist")
    s.set_defaults(func=_cmd_export_triton)

    s = sub.add_parser("infer", help="run a bundle once on the edge, splitting with a worker if given")
    s.add_argument("bundle", help="bundle directory")
    s.add_argument("--cloud", help="worker address HOST:PORT, or several IP:PORT,IP:PORT balanced round-robin "
                   "(omit to run locally)")
    s.add_argument("--input", required=True, help=".npy (single-input model) or .npz keyed by input name")
    s.add_argument("--output", help="write outputs to this .npz")
    s.add_argument("--split", help="split id, 'local' or 'cloud' (default: the bundle's default)")
    s.add_argument("--deadline-ms", type=float, default=1000.0, help="latency budget for the worker path")
    s.add_argument("--codec", help="codec for the cut tensors (default: the bundle's)")
    _add_client_tls(s)
    s.add_argument("--token-file", metavar="FILE",
                   help="bearer token for the worker (default: the SPLITPOINT_TOKEN environment variable)")
    s.set_defaults(func=_cmd_infer)

    s = sub.add_parser(
        "health", help="ask a worker's grpc.health.v1 service whether it serves: exit 0 if so, 1 if not",
        description="A health probe for containers (Docker HEALTHCHECK, Kubernetes exec probes on TLS workers): "
        "exit status 0 when the worker answers SERVING, 1 when it is down, still loading, draining or does not "
        "know the service. No token is needed.",
    )
    s.add_argument("address", metavar="HOST:PORT", help="the worker's address")
    s.add_argument("--service", default="",
                   help="a model name, or MODEL@SHA256 for one model version (default: the whole worker)")
    s.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="how long to wait (default: 2)")
    _add_client_tls(s)
    s.set_defaults(func=_cmd_health)

    s = sub.add_parser("bench-backends", help="latency and peak memory of one model on each runtime of this device")
    s.add_argument("models", nargs="+", metavar="MODEL",
                   help="the same model as .onnx (onnxruntime), .tflite (LiteRT) or .pt (TorchScript) files, "
                        "or module.py:factory (a torch module: exported to ONNX and TorchScript)")
    s.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="shape of an input of the first model (every input of a torch module), NAME=D0,D1,...")
    s.add_argument("--threads", type=int, default=1, help="intra-op threads per backend (default: 1)")
    s.add_argument("--runs", type=int, default=20, help="timed runs per backend per round (default: 20)")
    s.add_argument("--rounds", type=int, default=5, help="rounds; each runs every backend in turn (default: 5)")
    s.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    s.set_defaults(func=_cmd_bench_backends)

    s = sub.add_parser(
        "bench", help="measure local, cloud, every split and the adaptive runtime over emulated links",
        description="Start `splitpoint serve BUNDLE` as a separate process, put an emulated link (a shaping proxy on "
        "loopback, BANDWIDTH each way and RTT/2 delay each way) between it and this process, slow this process "
        "(the edge) to --edge-cpu cores, and measure per link, strategies interleaved request by request: all-local, "
        "all-cloud, every split in the bundle and the adaptive runtime (split='auto'; bundles made with --candidates "
        "auto). Prints p50/p95 latency, bytes on the wire and edge CPU time per request, names the oracle (the fixed "
        "strategy with the lowest measured p50) and the speedups over all-local and all-cloud. Progress goes to "
        "stderr. See docs/operators.md.",
    )
    s.add_argument("bundle", help="bundle directory")
    s.add_argument("--link", action="append", required=True, metavar="BANDWIDTH/RTT",
                   help="an emulated link such as 20mbit/20ms (kbit, mbit, gbit; ms, s); repeatable, one run each")
    s.add_argument("--edge-cpu", type=float, default=0.25, metavar="CORES",
                   help="CPU quota of the edge in cores, as a cgroup quota when this process may make one, else "
                   "pinned to one core (the method is recorded; default: 0.25; 0: no limit)")
    s.add_argument("--requests", type=int, default=30, metavar="N",
                   help="measured requests per strategy per link (default: 30)")
    s.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="unmeasured requests per strategy per link first; the adaptive runtime learns the link "
                   "during them (default: 3)")
    s.add_argument("--codec", help="codec for the cut tensors of every strategy (default: the bundle's; the "
                   "adaptive runtime's predictions assume the bundle's)")
    s.add_argument("--threads", type=int, default=1, metavar="N", help="edge intra-op threads (default: 1)")
    s.add_argument("--worker-threads", type=int, metavar="N",
                   help="the worker's intra-op threads (default: onnxruntime's, one per core)")
    s.add_argument("--share-weights", action="store_true",
                   help="run the edge as EdgeRuntime does by default, each weight held once across sessions (less "
                   "memory, slower convolutions; default: off, every strategy at onnxruntime's full speed)")
    s.add_argument("--json", metavar="FILE",
                   help="write the results: {links: [{link, strategies: {NAME: {p50_ms, p95_ms, bytes, ...}}, oracle}], "
                   "machine}")
    s.add_argument("--plot", metavar="FILE", help="draw latency per strategy per link to a PNG (matplotlib: the plot extra)")
    s.set_defaults(func=_cmd_bench)

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
