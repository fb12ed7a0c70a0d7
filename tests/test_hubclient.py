"""The hub client against real hubs on 127.0.0.1: messages, reconnection, several hubs, names."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator

import nacl.signing
import pytest
from aiohttp import web

from streamer.core import names
from streamer.core.errors import (
    NameNotFoundError,
    NameTakenError,
    NetworkError,
    ProofError,
    UsageError,
)
from streamer.hub import HubServer, start_hub
from streamer.net.hubclient import HubClient
from tests.fixtures_redis import free_port, redis_url  # noqa: F401
from tests.test_hub import signalhub_modules

TIMEOUT = 10.0


def secret_key() -> bytes:
    signing = nacl.signing.SigningKey.generate()
    return bytes(signing) + bytes(signing.verify_key)


async def next_message(subscription) -> object:
    return await asyncio.wait_for(subscription.__anext__(), TIMEOUT)


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    server = await start_hub()
    yield server
    await server.stop()


async def test_subscribe_and_broadcast_through_the_client(hub):
    async with HubClient(hub.url) as client:
        async with client.subscribe("app", ["a", "b"]) as sub:
            await sub.wait_connected(TIMEOUT)
            assert sub.connected == 1
            await client.broadcast("app", "b", {"hello": "b"})
            await client.broadcast("app", "a", [1, 2])
            assert await next_message(sub) == {"hello": "b"}
            assert await next_message(sub) == [1, 2]


async def test_url_without_scheme_is_accepted(hub):
    async with HubClient(f"127.0.0.1:{hub.port}/") as client:
        async with client.subscribe("app", ["a"]) as sub:
            await sub.wait_connected(TIMEOUT)
            await client.broadcast("app", "a", {"ok": True})
            assert await next_message(sub) == {"ok": True}


async def test_subscription_reconnects_when_the_hub_comes_back(caplog):
    caplog.set_level(logging.WARNING, logger="streamer.hubclient")
    port = free_port()
    first = await start_hub(port=port)
    second: HubServer | None = None
    try:
        async with HubClient(first.url, min_backoff=0.05, max_backoff=0.2) as client:
            async with client.subscribe("app", ["a"]) as sub:
                await sub.wait_connected(TIMEOUT)
                await first.stop()
                with pytest.raises(NetworkError):
                    await client.broadcast("app", "a", {"lost": True})
                second = await start_hub(port=port)
                deadline = time.monotonic() + TIMEOUT
                # The client retries on its own; keep posting until one arrives.
                while True:
                    await client.broadcast("app", "a", {"back": True})
                    try:
                        assert await asyncio.wait_for(sub.__anext__(), 0.2) == {"back": True}
                        break
                    except asyncio.TimeoutError:
                        assert time.monotonic() < deadline, "no reconnection"
                assert sub.opens == 2
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 1


async def test_refused_subscription_raises_instead_of_retrying(hub):
    async with HubClient(hub.url) as client:
        async with client.subscribe("app", ["not valid"]) as sub:
            with pytest.raises(NetworkError, match="400 invalid channel name"):
                await next_message(sub)


async def test_broadcast_with_no_reachable_hub_raises_network_error():
    async with HubClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(NetworkError, match="cannot reach hub"):
            await client.broadcast("app", "a", {})


async def test_broadcast_refused_by_the_hub_names_the_reason(hub):
    async with HubClient(hub.url) as client:
        with pytest.raises(NetworkError, match="413"):
            await client.broadcast("app", "a", {"pad": "x" * 70_000})


async def test_several_hubs_deliver_each_message_once(redis_url):  # noqa: F811
    one = await start_hub(redis_url=redis_url)
    two = await start_hub(redis_url=redis_url)
    lone = await start_hub()
    try:
        async with HubClient([one.url, two.url, lone.url]) as client:
            async with client.subscribe("app", ["a"]) as sub:
                deadline = time.monotonic() + TIMEOUT
                while sub.connected < 3:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                await client.broadcast("app", "a", {"n": 1})
                await client.broadcast("app", "a", {"n": 2})
                first, second = await next_message(sub), await next_message(sub)
                assert (first["n"], second["n"]) == (1, 2)
                assert first["msg_id"] != second["msg_id"]
    finally:
        for server in (one, two, lone):
            await server.stop()


async def test_names_register_and_resolve_with_verification(hub):
    key = secret_key()
    async with HubClient(hub.url) as client:
        record = await client.register_name("my-show", key)
        assert record.key == key[32:]
        resolved = await client.resolve_name("my-show")
        assert resolved == record
        with pytest.raises(NameTakenError, match="pick another name"):
            await client.register_name("my-show", secret_key())
        with pytest.raises(NameNotFoundError):
            await client.resolve_name("nobody")


async def tampering_hub(record: dict) -> web.AppRunner:
    """A hub that answers every name lookup with `record`, whatever it contains."""

    async def lookup(request: web.Request) -> web.Response:
        return web.json_response(record)

    app = web.Application()
    app.router.add_get("/names/{name}", lookup)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


@pytest.mark.parametrize("tamper", ["key", "time", "name"])
async def test_resolve_name_rejects_a_tampered_record(tamper):
    owner = secret_key()
    record = names.sign_record("show", owner, 1_700_000_000).to_json()
    if tamper == "key":
        record["key"] = secret_key()[32:].hex()
    elif tamper == "time":
        record["time"] += 1
    else:
        record = names.sign_record("other", owner, 1_700_000_000).to_json()
    runner = await tampering_hub(record)
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with HubClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(ProofError):
                await client.resolve_name("show")
    finally:
        await runner.cleanup()


async def test_resolve_name_prefers_an_honest_hub_over_a_lying_one(hub):
    owner = secret_key()
    forged = names.sign_record("show", secret_key(), 1_700_000_000).to_json()
    forged["key"] = owner[32:].hex()
    runner = await tampering_hub(forged)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with HubClient([f"http://127.0.0.1:{port}", hub.url]) as client:
            record = await client.register_name("show", owner)
            assert await client.resolve_name("show") == record
    finally:
        await runner.cleanup()


async def test_client_works_against_the_npm_signalhub_server():
    modules = await asyncio.to_thread(signalhub_modules)
    port = free_port()
    server = modules / "signalhub" / "server"
    node = await asyncio.create_subprocess_exec(
        "node", "-e",
        f"require({json.dumps(str(server))})().listen({port}, '127.0.0.1', () => console.log('up'))",
        stdout=subprocess.PIPE,
    )
    try:
        assert await asyncio.wait_for(node.stdout.readline(), TIMEOUT) == b"up\n"
        async with HubClient(f"http://127.0.0.1:{port}") as client:
            async with client.subscribe("app", ["a", "b"]) as sub:
                await sub.wait_connected(TIMEOUT)
                await client.broadcast("app", "b", {"to": "node"})
                assert await next_message(sub) == {"to": "node"}
    finally:
        node.kill()
        await node.wait()


# -- the record format itself (sans-IO) --------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "my-show", "show.2024_final", "0" * 63])
def test_valid_names(name):
    assert names.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "My-Show", "-lead", "a b", "é", "a/b", "a" * 64, "ab" * 32])
def test_invalid_names_are_refused_with_a_hint(name):
    with pytest.raises(UsageError, match="use 1-63 characters"):
        names.validate_name(name)


def test_records_round_trip_through_json_and_verify():
    key = secret_key()
    record = names.sign_record("show", key, 1_700_000_000)
    assert names.parse_verified(json.loads(json.dumps(record.to_json()))) == record
    assert names.signable("show", record.key, 1) != names.signable("show", record.key, 2)


def test_signature_covers_name_key_and_time():
    record = names.sign_record("show", secret_key(), 1_700_000_000)
    for changed in (
        names.NameRecord("shows", record.key, record.time, record.signature),
        names.NameRecord(record.name, secret_key()[32:], record.time, record.signature),
        names.NameRecord(record.name, record.key, record.time + 1, record.signature),
    ):
        with pytest.raises(ProofError, match="bad signature"):
            changed.verify()


def test_inconsistent_secret_key_is_refused():
    key = secret_key()
    with pytest.raises(UsageError, match="inconsistent"):
        names.sign_record("show", key[:32] + secret_key()[32:], 0)
