"""Security decided from the request head: API keys, CORS, request ids; and TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from transports.http import HTTPConfig

if TYPE_CHECKING:
    from conftest import FakeService

pytestmark = pytest.mark.anyio

KEYS = ("first-key", "second-key")
ORIGIN = "https://app.example"
PREFLIGHT = [
    ("origin", ORIGIN),
    ("access-control-request-method", "POST"),
    ("access-control-request-headers", "Authorization, Content-Type"),
]


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


# -- API keys ---------------------------------------------------------------------------


async def test_missing_or_wrong_key_is_401(running: Any, connect: Any, fake: FakeService) -> None:
    async with running(api_keys=KEYS) as server, connect(server) as client:
        missing = await client.request("POST", "/v1/chat/completions", body=b"{}")
        client.next_cycle()
        wrong = await client.request("POST", "/v1/x", body=b"{}", headers=bearer("nope"))
    for reply in (missing, wrong):
        assert reply.status == 401
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"]["param"] is None
    assert fake.requests == []


async def test_any_configured_key_is_accepted(running: Any, connect: Any) -> None:
    async with running(api_keys=KEYS) as server, connect(server) as client:
        reply = await client.request("POST", "/v1/x", body=b"{}", headers=bearer("second-key"))
    assert reply.status == 200


async def test_x_api_key_is_a_key_and_anthropic_paths_get_anthropics_401(
    running: Any, connect: Any, fake: FakeService
) -> None:
    async with running(api_keys=KEYS) as server, connect(server) as client:
        ok = await client.request("POST", "/v1/x", body=b"{}", headers=[("x-api-key", "first-key")])
        client.next_cycle()
        wrong = await client.request(
            "POST", "/v1/messages", body=b"{}", headers=[("x-api-key", "nope")]
        )
        client.next_cycle()
        missing = await client.request("POST", "/v1/messages/count_tokens", body=b"{}")
    assert ok.status == 200 and len(fake.requests) == 1
    for reply, message in ((wrong, "Incorrect API key provided."), (missing, "Missing API key.")):
        assert reply.status == 401
        error = {"type": "authentication_error", "message": message}
        assert reply.json() == {"type": "error", "error": error}


async def test_public_paths_and_preflight_need_no_key(running: Any, connect: Any) -> None:
    options = {"api_keys": KEYS, "allowed_origins": (ORIGIN,)}
    async with running(**options) as server, connect(server) as client:
        health = await client.request("GET", "/health")
        client.next_cycle()
        preflight = await client.request("OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)
    assert health.status == 200
    assert preflight.status == 204


# -- CORS -------------------------------------------------------------------------------


async def test_no_cross_origin_access_by_default(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        reply = await client.request("GET", "/health", headers=[("origin", ORIGIN)])
        client.next_cycle()
        preflight = await client.request("OPTIONS", "/v1/x", headers=PREFLIGHT)
    assert reply.status == 200
    assert "access-control-allow-origin" not in reply.headers
    assert preflight.status == 403
    assert "access-control-allow-origin" not in preflight.headers


async def test_allowed_origin_is_echoed(running: Any, connect: Any) -> None:
    async with running(allowed_origins=(ORIGIN,)) as server, connect(server) as client:
        allowed = await client.request("POST", "/v1/x", body=b"{}", headers=[("origin", ORIGIN)])
        client.next_cycle()
        other = await client.request("GET", "/health", headers=[("origin", "https://evil.example")])
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in other.headers
    assert other.headers["vary"] == "Origin"


async def test_wildcard_origin(running: Any, connect: Any) -> None:
    async with running(allowed_origins=("*",)) as server, connect(server) as client:
        reply = await client.request("GET", "/health", headers=[("origin", "http://any.example")])
    assert reply.headers["access-control-allow-origin"] == "http://any.example"


async def test_preflight_is_204_with_allow_headers(running: Any, connect: Any) -> None:
    async with running(allowed_origins=(ORIGIN,)) as server, connect(server) as client:
        reply = await client.request("OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)
    assert reply.status == 204
    assert reply.body == b""
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "authorization" in reply.headers["access-control-allow-headers"]
    assert "content-type" in reply.headers["access-control-allow-headers"]
    assert reply.headers["access-control-max-age"] == "600"


async def test_preflight_with_a_header_not_allowed_is_403(running: Any, connect: Any) -> None:
    headers = [*PREFLIGHT[:2], ("access-control-request-headers", "x-secret")]
    async with running(allowed_origins=(ORIGIN,)) as server, connect(server) as client:
        reply = await client.request("OPTIONS", "/v1/x", headers=headers)
    assert reply.status == 403


# -- request ids ------------------------------------------------------------------------


async def test_request_id_is_echoed_or_created(
    running: Any, connect: Any, fake: FakeService
) -> None:
    options = {"enable_request_id_headers": True}
    async with running(**options) as server, connect(server) as client:
        given = await client.request("GET", "/echo", headers=[("x-request-id", "abc-123")])
        client.next_cycle()
        created = await client.request("GET", "/echo")
    assert given.headers["x-request-id"] == "abc-123"
    assert fake.requests[0].request_id == "abc-123"
    new_id = created.headers["x-request-id"]
    assert len(new_id) == 32 and int(new_id, 16) >= 0
    assert fake.requests[1].request_id == new_id


async def test_request_id_goes_to_the_service_even_when_not_echoed(
    running: Any, connect: Any, fake: FakeService
) -> None:
    async with running() as server, connect(server) as client:
        reply = await client.request("GET", "/echo")
    assert "x-request-id" not in reply.headers
    assert len(fake.requests[0].request_id) == 32


# -- TLS ---------------------------------------------------------------------------------


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


async def test_tls_round_trip(running: Any, connect: Any, tmp_path: Path) -> None:
    certfile, keyfile = self_signed_cert(tmp_path)
    client_context = ssl.create_default_context(cafile=str(certfile))
    options = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    async with running(**options) as server:
        assert server.urls[0].startswith("https://127.0.0.1:")
        tls = {"tls": True, "ssl_context": client_context, "tls_hostname": "localhost"}
        tls["tls_standard_compatible"] = False  # HTTP frames itself: no close_notify
        async with connect(server, **tls) as client:
            first = await client.request("POST", "/echo", body=b"secret")
            client.next_cycle()
            second = await client.request("GET", "/health")
    assert first.json()["body"] == "secret"
    assert second.status == 200


def test_config_rejects_half_a_tls_setup() -> None:
    with pytest.raises(ValueError, match="together"):
        HTTPConfig(ssl_certfile="cert.pem")


async def test_tls_client_certificates(running: Any, connect: Any, tmp_path: Path) -> None:
    """--ssl-ca-certs with --ssl-cert-reqs 2: a client with a certificate the CA file
    vouches for is served; one without is refused in the handshake."""
    import anyio
    import h11

    (tmp_path / "server").mkdir()
    (tmp_path / "client").mkdir()
    certfile, keyfile = self_signed_cert(tmp_path / "server")
    client_cert, client_key = self_signed_cert(tmp_path / "client")
    options = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile),
               "ssl_ca_certs": str(client_cert), "ssl_cert_reqs": ssl.CERT_REQUIRED}  # fmt: skip
    with_cert = ssl.create_default_context(cafile=str(certfile))
    with_cert.load_cert_chain(str(client_cert), str(client_key))
    without_cert = ssl.create_default_context(cafile=str(certfile))
    async with running(**options) as server:
        for context, allowed in ((with_cert, True), (without_cert, False)):
            tls = {"tls": True, "ssl_context": context, "tls_hostname": "localhost",
                   "tls_standard_compatible": False}  # fmt: skip
            if allowed:
                async with connect(server, **tls) as client:
                    assert (await client.request("GET", "/health")).status == 200
                continue
            refused = (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream,
                       h11.RemoteProtocolError)  # fmt: skip
            with pytest.raises(refused):
                async with connect(server, **tls) as client:
                    await client.request("GET", "/health")


def test_config_rejects_client_certificates_without_a_ca() -> None:
    with pytest.raises(ValueError, match="ssl_ca_certs"):
        HTTPConfig(ssl_cert_reqs=ssl.CERT_REQUIRED)


# -- root path ---------------------------------------------------------------------------


async def test_root_path_is_stripped(running: Any, connect: Any, fake: FakeService) -> None:
    """--root-path /llm: /llm/v1/models is served as /v1/models (and the API key is
    checked against the stripped path); paths without the prefix still work."""
    async with running(root_path="/llm", api_keys=KEYS) as server, connect(server) as client:
        health = await client.request("GET", "/llm/health")
        client.next_cycle()
        models = await client.request("GET", "/llm/v1/models", headers=bearer(KEYS[0]))
        client.next_cycle()
        plain = await client.request("GET", "/v1/models", headers=bearer(KEYS[0]))
        client.next_cycle()
        other = await client.request("GET", "/llmx/v1", headers=bearer(KEYS[0]))
    assert health.status == 200
    assert [r.path for r in fake.requests] == ["/health", "/v1/models", "/v1/models", "/llmx/v1"]
    assert models.status == plain.status == other.status == 200
