"""Running a hub: an aiohttp AppRunner listening on a host and port inside the current loop,
over plain HTTP or TLS (aiohttp serves https and SSE itself).

The listening socket and its TLS context are set up here and only here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from streamer.core.errors import NetworkError, UsageError
from streamer.hub.app import Hub
from streamer.hub.config import HubConfig


class HubServer:
    """A hub running on an AppRunner inside the current event loop (for embedding and tests)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        redis_url: str | None = None,
        config: HubConfig | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.hub = Hub(config, redis_url)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> str:
        """Start serving; returns the base URL (the bound port if 0 was asked for)."""
        # handler_cancellation: a client that disconnects frees its subscription at once.
        runner = web.AppRunner(
            self.hub.make_app(), handler_cancellation=True, shutdown_timeout=2.0,
            access_log=None,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NetworkError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "choose another --port or --host"
            ) from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        """Stop serving: open SSE streams end, Redis connections close."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def start_hub(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    redis_url: str | None = None,
    config: HubConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> HubServer:
    """Start a hub in the running loop and return it; `.url` is its address, `.stop()` ends it."""
    server = HubServer(host, port, redis_url=redis_url, config=config, ssl_context=ssl_context)
    await server.start()
    return server


def tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate chain and its private key; UsageError naming
    the file and what is wrong with it otherwise."""
    for option, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        if not Path(path).is_file():
            raise UsageError(f"{option} {path}: no such file; give a PEM file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except PermissionError as exc:
        raise UsageError(f"cannot read {exc.filename or cert_file}: permission denied") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            raise UsageError(
                f"--tls-key {key_file} is not the key of --tls-cert {cert_file}; give the pair"
            ) from None
        raise UsageError(
            f"cannot use --tls-cert {cert_file} with --tls-key {key_file} ({reason}); give a PEM "
            "certificate chain and its PEM private key"
        ) from None
    return context
