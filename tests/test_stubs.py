"""The committed gRPC stubs are what proto/ generates, and they load on this protobuf."""

from __future__ import annotations

from pathlib import Path

from splitpoint._proto import generate


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    for name in generate.GENERATED:
        committed = (generate.PACKAGE_DIR / name).read_text()
        fresh = (tmp_path / name).read_text()
        assert committed == fresh, f"splitpoint/_proto/{name} is stale: run `make stubs` and commit"


def test_stubs_are_protobuf6_gencode() -> None:
    """protobuf-6 gencode loads on protobuf 6.31+ and 7.x; 7.x gencode would not load on 6."""
    text = (generate.PACKAGE_DIR / "grpc_service_pb2.py").read_text()
    assert "# Protobuf Python Version: 6." in text


def test_oip_package_and_field_numbers() -> None:
    """Spot-check wire compatibility with the published KServe v2 / Triton proto."""
    from splitpoint._proto import grpc_service_pb2 as pb

    assert pb.DESCRIPTOR.package == "inference"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name for m in service.methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
    }
    req = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert {n: req[n].number for n in ("model_name", "model_version", "id", "parameters", "inputs", "outputs",
                                        "raw_input_contents")} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
        "raw_input_contents": 7}
    resp = pb.ModelInferResponse.DESCRIPTOR.fields_by_name
    assert resp["raw_output_contents"].number == 6 and resp["outputs"].number == 5
    param = pb.InferParameter.DESCRIPTOR.fields_by_name
    assert {n: param[n].number for n in param} == {
        "bool_param": 1, "int64_param": 2, "string_param": 3, "double_param": 4, "uint64_param": 5}


def test_loads_beside_tritonclient_in_one_process() -> None:
    """tritonclient registers its own `inference.*` messages; ours must not clash with them."""
    import subprocess
    import sys

    code = (
        "import tritonclient.grpc.service_pb2 as t\n"
        "from splitpoint._proto import grpc_service_pb2 as pb\n"
        "r = pb.ModelInferRequest(model_name='m', raw_input_contents=[b'abc'])\n"
        "r.inputs.add(name='x', datatype='FP16', shape=[3])\n"
        "u = t.ModelInferRequest.FromString(r.SerializeToString())\n"
        "assert (u.model_name, u.inputs[0].datatype, list(u.inputs[0].shape)) == ('m', 'FP16', [3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
