"""The hub over TLS, with a CA and certificate made for the test: clients verify the certificate
(a private CA through --hub-ca or SSL_CERT_FILE), SSE and POST work over https, a certificate
that does not verify is named in one line, and the hub refuses a key that is not its
certificate's. End to end: `streamer hub --tls-cert --tls-key`, a broadcaster and a viewer over
https, the viewer taking its ICE servers (coturn credentials) from the hub."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from streamer.core.errors import NetworkError, UsageError
from streamer.hub import start_hub
from streamer.hub.server import tls_context
from streamer.net.hubclient import HubClient
from tests.fixtures_net import Certificates, Coturn, certificates, coturn  # noqa: F401
from tests.waiting import eventually


async def test_sse_and_post_over_tls_with_a_private_ca(certificates: Certificates) -> None:  # noqa: F811
    hub = await start_hub(ssl_context=tls_context(certificates.cert, certificates.key))
    assert hub.url.startswith("https://")
    try:
        async with HubClient(hub.url, ca_file=str(certificates.ca)) as client:
            async with client.subscribe("demo", ["room"]) as sub:
                await sub.wait_connected(10.0)
                await client.broadcast("demo", "room", {"hello": "tls"})
                assert await asyncio.wait_for(sub.__anext__(), 10.0) == {"hello": "tls"}
            assert await client.ice() == {"iceServers": []}
    finally:
        await hub.stop()


async def test_ssl_cert_file_is_trusted_too(
    certificates: Certificates, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    hub = await start_hub("localhost", ssl_context=tls_context(certificates.cert, certificates.key))
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))
        async with HubClient(hub.url) as client:
            await client.broadcast("demo", "room", {"n": 1})
    finally:
        await hub.stop()


async def test_a_certificate_that_does_not_verify_is_named(certificates: Certificates) -> None:  # noqa: F811
    hub = await start_hub(ssl_context=tls_context(certificates.cert, certificates.key))
    try:
        async with HubClient(hub.url) as client:  # the system's CAs do not know ours
            with pytest.raises(NetworkError) as refused:
                await client.broadcast("demo", "room", {"n": 1})
        message = str(refused.value)
        assert "certificate does not verify" in message and "--hub-ca" in message
        assert "\n" not in message
        # Plain http to an https hub, and https to a plain hub: named, not a traceback.
        async with HubClient(hub.url.replace("https", "http")) as client:
            with pytest.raises(NetworkError):
                await client.broadcast("demo", "room", {"n": 1})
    finally:
        await hub.stop()


def test_bad_tls_files_are_refused_in_one_line(certificates: Certificates, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="is not the key of --tls-cert"):
        tls_context(certificates.cert, certificates.other_key)
    with pytest.raises(UsageError, match="no such file"):
        tls_context(tmp_path / "missing.pem", certificates.key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="PEM"):
        tls_context(junk, certificates.key)
    with pytest.raises(UsageError, match="--hub-ca"):
        HubClient("https://127.0.0.1:1", ca_file=str(tmp_path / "missing-ca.pem"))


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=5) as resp:
        return json.loads(resp.read())


async def test_broadcast_and_watch_through_an_https_hub_with_hub_ice(
    certificates: Certificates, coturn: Coturn, tmp_path: Path  # noqa: F811
) -> None:
    secret = tmp_path / "turn.secret"
    secret.write_text(coturn.secret.decode() + "\n")
    secret.chmod(0o600)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("SSL_CERT_FILE", None)
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    async def line(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        return (await asyncio.wait_for(proc.stdout.readline(), 60.0)).decode().strip()

    try:
        hub = await start(
            "-m", "streamer", "hub", "--port", "0", "--tls-cert", str(certificates.cert),
            "--tls-key", str(certificates.key), "--turn", coturn.url,
            "--turn-secret", str(secret),
        )
        hub_url = (await line(hub)).split()[-1]
        assert hub_url.startswith("https://127.0.0.1:")
        writer = await start(
            "-m", "streamer", "broadcast", "test", "--hub", hub_url, "--hub-ca",
            str(certificates.ca), "--name", "tls-stream", "--size", "320x180", "--fps", "15",
            "--bitrate", "300k", "--duration", "30", "--feed", str(tmp_path / "feed"),
        )
        key = await line(writer)
        assert len(key) == 64

        # Without the CA the viewer stops at once, naming the certificate.
        refused = await start(
            "-m", "viewer", "watch", "tls-stream", "--hub", hub_url, "--no-browser",
        )
        _, err = await asyncio.wait_for(refused.communicate(), 60.0)
        assert refused.returncode == 1
        assert "certificate does not verify" in err.decode() and "--hub-ca" in err.decode()
        assert len(err.decode().strip().splitlines()) == 1

        viewer = await start(
            "-m", "viewer", "watch", "tls-stream", "--hub", hub_url, "--hub-ca",
            str(certificates.ca), "--no-browser", "--port", "0", "--store", str(tmp_path / "v"),
        )
        page = await line(viewer)

        async def playing() -> bool:
            stats = await asyncio.to_thread(_stats, page)
            return stats["blocks_have"] >= 3 and stats["peers"] >= 1

        await eventually(playing, "the viewer to fetch blocks over the https hub", timeout=60)
        # Both ends took their TURN credentials from the hub: allocations by the fixture's and
        # the hub's checks, each node's check, and both ends of at least one dial.
        assert coturn.log.read_text().count("ALLOCATE processed, success") >= 6
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
