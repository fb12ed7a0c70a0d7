"""Running a hub: an aiohttp AppRunner listening on a host and port inside the current loop.

The listening socket is set up here and only here; serving over TLS would add its SSL context
to the TCPSite in HubServer.start().
"""

from __future__ import annotations

from aiohttp import web

from streamer.core.errors import NetworkError
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
    ) -> None:
        self.host = host
        self.port = port
        self.hub = Hub(config, redis_url)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Start serving; returns the base URL (the bound port if 0 was asked for)."""
        # handler_cancellation: a client that disconnects frees its subscription at once.
        runner = web.AppRunner(
            self.hub.make_app(), handler_cancellation=True, shutdown_timeout=2.0,
            access_log=None,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
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
) -> HubServer:
    """Start a hub in the running loop and return it; `.url` is its address, `.stop()` ends it."""
    server = HubServer(host, port, redis_url=redis_url, config=config)
    await server.start()
    return server
