"""TLS: the server SSLContext built from the configured key and certificate
files, and the server-side handshake of one accepted stream. Invariant: a
handshake never outlives tls_handshake_timeout, and a failed one closes the raw
stream and yields nothing (it is not an HTTP error: there is no HTTP yet).
"""

from __future__ import annotations

import logging
import ssl

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from transports.http.config import HTTPConfig

logger = logging.getLogger("llmcore.http")


def server_ssl_context(config: HTTPConfig) -> ssl.SSLContext | None:
    """The SSLContext for `config`, or None when TLS is not configured."""
    if config.ssl_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(
        config.ssl_certfile, config.ssl_keyfile, password=config.ssl_keyfile_password
    )
    if config.ssl_ca_certs is not None:
        context.load_verify_locations(cafile=config.ssl_ca_certs)
    context.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    if config.ssl_ciphers is not None:
        context.set_ciphers(config.ssl_ciphers)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def tls_handshake(
    stream: ByteStream, context: ssl.SSLContext, timeout: float
) -> ByteStream | None:
    """The TLS stream over `stream`, or None (and `stream` closed) if the handshake
    failed or took longer than `timeout`. HTTP frames its own messages, so the TLS
    close_notify exchange is not required (standard_compatible=False)."""
    try:
        with anyio.fail_after(timeout):
            return await TLSStream.wrap(
                stream, server_side=True, ssl_context=context, standard_compatible=False
            )
    except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        logger.debug("TLS handshake failed: %r", exc)
        await anyio.aclose_forcefully(stream)
        return None
    except BaseException:  # cancelled (shutdown): still release the socket
        await anyio.aclose_forcefully(stream)
        raise
