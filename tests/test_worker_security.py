"""TLS, mutual TLS and bearer tokens against real worker processes.

Certificates come from throwaway CAs made in the test (cryptography): one CA
signs the worker's and a client's certificate, another CA signs an impostor.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from cloud.security import server_credentials
from edge.client import ClientTLS, WorkerClient
from splitpoint import wire
from splitpoint._proto import grpc_service_pb2 as pb
from splitpoint._proto import grpc_service_pb2_grpc as pb_grpc
from splitpoint.backends import load_session
from splitpoint.bundle import Bundle, segment_model_name
from splitpoint.credentials import read_token
from splitpoint.errors import SplitpointError

TOKEN = "s3cr3t-Token_for.tests"
ENV_TOKEN = "another-token-from-the-environment"


# -- a throwaway PKI -----------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool = False, server: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Identity:
    cert: Path
    key: Path


@dataclass
class PKI:
    ca: Path
    server: Identity
    client: Identity
    impostor: Identity  # signed by another CA
    other_ca: Path


def _write(directory: Path, stem: str, cert, key) -> Identity:
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Identity(directory / f"{stem}.crt", directory / f"{stem}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ids = {}
    for ca_name, leaves in (("ca", ("server", "client")), ("other-ca", ("impostor",))):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ids[ca_name] = _write(d, ca_name, _certificate(ca_name, ca_key, ca_name, ca_key, ca=True), ca_key)
        for leaf in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            ids[leaf] = _write(d, leaf, _certificate(leaf, key, ca_name, ca_key, server=leaf == "server"), key)
    return PKI(ids["ca"].cert, ids["server"], ids["client"], ids["impostor"], ids["other-ca"].cert)


# -- workers and requests ------------------------------------------------------------


def _tls_args(pki: PKI) -> list[str]:
    return ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]


@pytest.fixture(scope="module")
def tls_worker(module_worker_factory, demo_bundle, pki, tmp_path_factory):
    """TLS with a bearer token from --token-file."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    return module_worker_factory(demo_bundle, args=[*_tls_args(pki), "--token-file", str(token_file)],
                                 tls=ClientTLS(root_ca=pki.ca))


@pytest.fixture(scope="module")
def mtls_worker(module_worker_factory, demo_bundle, pki):
    """Mutual TLS, with the token taken from SPLITPOINT_TOKEN."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLITPOINT_TOKEN", ENV_TOKEN)
        return module_worker_factory(demo_bundle, args=[*_tls_args(pki), "--tls-client-ca", str(pki.ca)],
                                     tls=ClientTLS(root_ca=pki.ca, cert=pki.client.cert, key=pki.client.key))


@pytest.fixture(scope="module")
def model(demo_bundle) -> str:
    return segment_model_name(Bundle(demo_bundle).name, "cloud")


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)}


@pytest.fixture(scope="module")
def expected(demo_bundle, sample) -> np.ndarray:
    return load_session(Bundle(demo_bundle).model_path()).run(sample)["logits"]


def _infer(client: WorkerClient, model: str, image) -> np.ndarray:
    request, _ = wire.build_request(model, image)
    return wire.read_response(client.infer(request, timeout=10))["logits"]


def _code(call, *args) -> grpc.StatusCode:
    """The status code of the RpcError that ``call(*args)`` raises."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()


# -- TLS ----------------------------------------------------------------------------


def test_tls_worker_answers_clients_that_trust_its_ca(tls_worker, pki, model, sample, expected):
    client = WorkerClient(tls_worker.address, tls=ClientTLS(root_ca=pki.ca), token=TOKEN)
    try:
        np.testing.assert_array_equal(_infer(client, model, sample), expected)
        assert client.serving()
    finally:
        client.close()


@pytest.mark.parametrize("who", ["plaintext", "trusts-another-ca"])
def test_clients_without_the_right_tls_cannot_reach_it(tls_worker, pki, model, sample, who):
    tls = None if who == "plaintext" else ClientTLS(root_ca=pki.other_ca)
    client = WorkerClient(tls_worker.address, tls=tls, token=TOKEN)
    try:
        assert _code(_infer, client, model, sample) == grpc.StatusCode.UNAVAILABLE
        assert not client.serving()
    finally:
        client.close()


@pytest.mark.parametrize("who", ["no-certificate", "certificate-from-another-ca"])
def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(mtls_worker, pki, model, sample, who):
    tls = ClientTLS(root_ca=pki.ca) if who == "no-certificate" else \
        ClientTLS(root_ca=pki.ca, cert=pki.impostor.cert, key=pki.impostor.key)
    client = WorkerClient(mtls_worker.address, tls=tls, token=ENV_TOKEN)
    try:
        assert _code(_infer, client, model, sample) == grpc.StatusCode.UNAVAILABLE
    finally:
        client.close()


def test_mutual_tls_with_token_from_the_environment(mtls_worker, pki, model, sample, expected):
    tls = ClientTLS(root_ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    with_token, without = WorkerClient(mtls_worker.address, tls=tls, token=ENV_TOKEN), WorkerClient(mtls_worker.address, tls=tls)
    try:
        np.testing.assert_array_equal(_infer(with_token, model, sample), expected)
        assert _code(_infer, without, model, sample) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        with_token.close()
        without.close()


# -- tokens ---------------------------------------------------------------------------

BAD_AUTHORIZATION = {
    "missing": None,
    "wrong": "Bearer not-the-token",
    "prefix": f"Bearer {TOKEN[:-1]}",
    "longer": f"Bearer {TOKEN}x",
    "other-scheme": f"Basic {TOKEN}",
    "no-scheme": TOKEN,
    "empty": "Bearer ",
}


def _oip_calls(stub: pb_grpc.GRPCInferenceServiceStub, model: str, image) -> dict:
    """Every RPC of the OIP service, as calls taking gRPC metadata."""
    request = wire.build_request(model, image)[0].message()
    return {
        "ServerLive": lambda md: stub.ServerLive(pb.ServerLiveRequest(), metadata=md),
        "ServerReady": lambda md: stub.ServerReady(pb.ServerReadyRequest(), metadata=md),
        "ModelReady": lambda md: stub.ModelReady(pb.ModelReadyRequest(name=model), metadata=md),
        "ServerMetadata": lambda md: stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=md),
        "ModelMetadata": lambda md: stub.ModelMetadata(pb.ModelMetadataRequest(name=model), metadata=md),
        "RepositoryIndex": lambda md: stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=md),
        "ModelInfer": lambda md: stub.ModelInfer(request, metadata=md),
        "ModelStreamInfer": lambda md: list(stub.ModelStreamInfer(iter([request]), metadata=md)),
    }


def test_every_oip_rpc_needs_the_token(tls_worker, pki, model, sample):
    channel = grpc.secure_channel(tls_worker.address, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        calls = _oip_calls(stub, model, sample)
        assert set(calls) == {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
        for name, call in calls.items():
            for case, value in BAD_AUTHORIZATION.items():
                md = None if value is None else [("authorization", value)]
                assert _code(call, md) == grpc.StatusCode.UNAUTHENTICATED, (name, case)
            assert call([("authorization", f"Bearer {TOKEN}")]), name
            assert call([("authorization", f"bearer {TOKEN}")]), name  # the scheme is case-insensitive (RFC 7235)
    finally:
        channel.close()


def test_health_stays_open_without_a_token(tls_worker, pki, model):
    """Kubernetes gRPC probes and load balancers cannot send a token."""
    with grpc.secure_channel(tls_worker.address, grpc.ssl_channel_credentials(pki.ca.read_bytes())) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", model):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_log_never_shows_the_token_or_key(tls_worker, pki, model, sample):
    client = WorkerClient(tls_worker.address, tls=ClientTLS(root_ca=pki.ca), token=TOKEN[::-1])
    try:
        assert _code(_infer, client, model, sample) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        client.close()
    log = tls_worker.log_text()
    assert "missing or wrong bearer token" in log and "(TLS, bearer token)" in log
    key_body = pki.server.key.read_text().splitlines()[1]
    for secret in (TOKEN, TOKEN[::-1], key_body):
        assert secret not in log


def test_tritonclient_over_tls_with_a_token_header(tls_worker, pki, model, sample, expected):
    client = tc.InferenceServerClient(tls_worker.address, ssl=True, root_certificates=str(pki.ca))
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        assert client.is_server_live(headers=headers) and client.is_model_ready(model, headers=headers)
        x = tc.InferInput("image", list(sample["image"].shape), "FP32")
        x.set_data_from_numpy(sample["image"])
        np.testing.assert_array_equal(client.infer(model, [x], headers=headers).as_numpy("logits"), expected)
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [x])
        assert "UNAUTHENTICATED" in str(info.value.status())
    finally:
        client.close()


# -- configuration errors -------------------------------------------------------------


def test_mismatched_key_is_one_cli_line_naming_the_file(demo_bundle, pki):
    out = subprocess.run(
        [sys.executable, "-m", "splitpoint", "serve", str(demo_bundle), "--port", "0",
         "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.client.key)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(pki.client.key) in lines[0], out.stderr


@pytest.mark.parametrize("fault", ["missing-cert", "cert-not-pem", "key-is-a-cert", "ca-not-pem", "missing-ca"])
def test_bad_certificate_files_name_the_file(pki, tmp_path, fault):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cert, key, ca = pki.server.cert, pki.server.key, None
    if fault == "missing-cert":
        cert = tmp_path / "absent.crt"
    elif fault == "cert-not-pem":
        cert = junk
    elif fault == "key-is-a-cert":
        key = pki.ca
    elif fault == "ca-not-pem":
        ca = junk
    else:
        ca = tmp_path / "absent-ca.crt"
    named = {"missing-cert": cert, "cert-not-pem": cert, "key-is-a-cert": key}.get(fault, ca)
    with pytest.raises(SplitpointError) as info:
        server_credentials(cert, key, ca)
    message = str(info.value)
    assert str(named) in message and "\n" not in message


def test_token_file_errors_name_the_file(tmp_path):
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "absent", tmp_path / "empty"):
        with pytest.raises(SplitpointError, match=str(path)):
            read_token(path)


def test_client_tls_errors_name_the_file(pki, tmp_path):
    with pytest.raises(SplitpointError, match="absent.crt"):
        WorkerClient("127.0.0.1:1", tls=ClientTLS(root_ca=tmp_path / "absent.crt"))
    with pytest.raises(SplitpointError, match="give both"):
        WorkerClient("127.0.0.1:1", tls=ClientTLS(root_ca=pki.ca, cert=pki.client.cert))


def test_edge_runtime_and_cli_reach_a_secured_worker(mtls_worker, pki, demo_bundle, sample, expected, tmp_path):
    """EdgeRuntime and `splitpoint infer` carry mutual TLS and the token; without the token they fall back."""
    from edge import EdgeRuntime

    tls = ClientTLS(root_ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    with EdgeRuntime(demo_bundle, cloud=mtls_worker.address, split="cloud", tls=tls, token=ENV_TOKEN) as rt:
        np.testing.assert_array_equal(rt.infer(sample)["logits"], expected)
        assert rt.last_trace.path == "cloud"
    with EdgeRuntime(demo_bundle, cloud=mtls_worker.address, split="cloud", tls=tls) as rt:
        np.testing.assert_array_equal(rt.infer(sample)["logits"], expected)
        assert rt.last_trace.fallback_reason == "worker refused our credentials"

    np.save(tmp_path / "x.npy", sample["image"])
    (tmp_path / "token").write_text(ENV_TOKEN)
    out = subprocess.run(
        [sys.executable, "-m", "splitpoint", "infer", str(demo_bundle), "--cloud", mtls_worker.address,
         "--split", "cloud", "--input", str(tmp_path / "x.npy"), "--tls-ca", str(pki.ca),
         "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key), "--token-file", str(tmp_path / "token")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0 and '"path": "cloud"' in out.stdout, out.stderr
