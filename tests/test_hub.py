"""The signaling hub, tested over real HTTP on 127.0.0.1 (and a real redis-server for sharing)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nacl.signing
import pytest

from streamer.core import names
from streamer.hub import HubConfig, HubServer, start_hub
from tests.fixtures_redis import RedisProcess, redis_server, redis_url  # noqa: F401
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0


def secret_key() -> bytes:
    signing = nacl.signing.SigningKey.generate()
    return bytes(signing) + bytes(signing.verify_key)


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    server = await start_hub(config=HubConfig(rate_burst=1000, rate_per_second=1000))
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=TIMEOUT)) as s:
        yield s


class Stream:
    """A raw SSE connection, read event by event."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next_raw(self) -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), TIMEOUT)).decode()
            if line in ("\n", ""):
                if line == "" and not lines:
                    raise EOFError("stream ended")
                return "".join(lines)
            lines.append(line)

    async def next_message(self) -> object:
        while True:
            raw = await self.next_raw()
            if raw.startswith("data: "):
                return json.loads(raw[len("data: "):])


async def subscribe(session: aiohttp.ClientSession, url: str) -> Stream:
    response = await session.get(url)
    assert response.status == 200, await response.text()
    return Stream(response)


async def test_root_says_name_version_and_subscriber_count(hub, session):
    async with session.get(hub.url + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["name"] == "swarmcast-hub"
    assert body["version"]
    assert body["subscribers"] == 0
    stream = await subscribe(session, hub.url + "/v1/app/one")
    async with session.get(hub.url + "/") as resp:
        assert (await resp.json())["subscribers"] == 1
    stream.response.close()


async def test_subscriber_gets_messages_of_its_channels_only(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a,b")
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-cache"
    for channel, body in (("a", {"n": 1}), ("c", {"n": 2}), ("b", {"n": 3})):
        async with session.post(f"{hub.url}/v1/app/{channel}", json=body) as resp:
            assert resp.status == 200
    assert await stream.next_message() == {"n": 1}
    assert await stream.next_message() == {"n": 3}


async def test_messages_are_relayed_as_compact_single_line_json(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a")
    body = b'{\n  "text": "line\\nbreak \xc3\xa9",\n  "list": [1, 2]\n}'
    async with session.post(hub.url + "/v1/app/a", data=body) as resp:
        assert resp.status == 200
    raw = await stream.next_raw()
    assert raw == 'data: {"text":"line\\nbreak é","list":[1,2]}\n'


async def test_same_channel_in_other_app_is_separate(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a")
    await session.post(hub.url + "/v1/other/a", json={"wrong": True})
    await session.post(hub.url + "/v1/app/a", json={"right": True})
    assert await stream.next_message() == {"right": True}


async def test_idle_streams_get_heartbeat_comments(session):
    async with HubServer(port=0, config=HubConfig(heartbeat_seconds=0.05)) as server:
        stream = await subscribe(session, server.url + "/v1/app/quiet")
        assert await stream.next_raw() == ":heartbeat signal\n"
        stream.response.close()


async def test_cors_headers_on_answers_errors_streams_and_preflight(hub, session):
    async with session.options(hub.url + "/v1/app/a") as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
    for method, path in (("GET", "/"), ("POST", "/v1/app/a"), ("GET", "/v1/bad name/a")):
        async with session.request(method, hub.url + path, data=b"{}") as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
    stream = await subscribe(session, hub.url + "/v1/app/a")
    assert stream.response.headers["Access-Control-Allow-Origin"] == "*"
    stream.response.close()


async def test_oversized_body_gets_413_and_hub_keeps_serving(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a")
    big = json.dumps({"pad": "x" * (64 * 1024)}).encode()
    async with session.post(hub.url + "/v1/app/a", data=big) as resp:
        assert resp.status == 413
        assert "body larger" in (await resp.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:
        yield big  # no Content-Length: the limit must hold while reading, too

    async with session.post(hub.url + "/v1/app/a", data=chunks()) as resp:
        assert resp.status == 413
    fits = json.dumps({"pad": "x" * (60 * 1024)})
    async with session.post(hub.url + "/v1/app/a", data=fits) as resp:
        assert resp.status == 200
    assert len((await stream.next_message())["pad"]) == 60 * 1024


async def test_malformed_json_gets_400_and_others_are_still_served(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a")
    for bad in (b"{not json", b"", b"\xff\xfe", b'{"a": 1} trailing'):
        async with session.post(hub.url + "/v1/app/a", data=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "the body is not valid JSON"
    await session.post(hub.url + "/v1/app/a", json=["still", "works"])
    assert await stream.next_message() == ["still", "works"]


async def test_lone_surrogate_in_body_is_relayed_escaped(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a")
    async with session.post(hub.url + "/v1/app/a", data=b'{"s": "\\ud800"}') as resp:
        assert resp.status == 200
    assert await stream.next_message() == {"s": "\ud800"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/app/bad%20name",
        "/v1/app/a,,b",
        "/v1/ap$p/x",
        "/v1/app",
        "/v1/app/",
        "/v1/app/x/y",
        "/v1/app/" + "c" * 129,
        "/v1/" + "a" * 129 + "/x",
    ],
)
async def test_malformed_app_or_channel_names_get_400(hub, session, path):
    for method in ("GET", "POST"):
        async with session.request(method, hub.url + path, json={}) as resp:
            assert resp.status == 400, (method, path)
            assert "error" in await resp.json()
    async with session.get(hub.url + "/") as resp:
        assert resp.status == 200


async def test_post_to_several_channels_at_once_is_refused(hub, session):
    async with session.post(hub.url + "/v1/app/a,b", json={}) as resp:
        assert resp.status == 400


async def test_unknown_paths_get_404_json(hub, session):
    async with session.get(hub.url + "/v2/app/a") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_too_many_channels_in_one_subscription_gets_400(hub, session):
    channels = ",".join(f"c{i}" for i in range(65))
    async with session.get(f"{hub.url}/v1/app/{channels}") as resp:
        assert resp.status == 400
        assert "at most 64 channels" in (await resp.json())["error"]
    stream = await subscribe(session, f"{hub.url}/v1/app/" + ",".join(f"c{i}" for i in range(64)))
    stream.response.close()


async def test_full_channel_refuses_more_subscribers_with_429(session):
    config = HubConfig(max_subscribers_per_channel=2)
    async with HubServer(port=0, config=config) as server:
        streams = [await subscribe(session, server.url + "/v1/app/busy") for _ in range(2)]
        async with session.get(server.url + "/v1/app/busy") as resp:
            assert resp.status == 429
            assert "subscribers already" in (await resp.json())["error"]
        other = await subscribe(session, server.url + "/v1/app/quiet")
        streams[0].response.close()
        await eventually(lambda: len(server.hub.channels.get("app/busy", ())) == 1, "unsubscribe")
        again = await subscribe(session, server.url + "/v1/app/busy")
        for s in [*streams, other, again]:
            s.response.close()


async def test_flooding_client_gets_429_while_another_client_still_works(session):
    config = HubConfig(rate_per_second=5, rate_burst=10)
    async with HubServer(port=0, config=config) as server:
        statuses = []
        for _ in range(30):
            async with session.post(server.url + "/v1/app/a", json={}) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert "too many requests" in (await resp.json())["error"]
        assert statuses[:10] == [200] * 10
        assert 429 in statuses
        # Another client, from another loopback address, is not affected.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            async with other.get(server.url + "/") as resp:
                assert resp.status == 200


async def test_rate_limit_rejections_are_counted(session):
    config = HubConfig(rate_per_second=1, rate_burst=2)
    async with HubServer(port=0, config=config) as server:
        for _ in range(4):
            async with session.get(server.url + "/"):
                pass
        rejected = server.hub.metrics.rejections["rate_limited"]
        assert rejected >= 1


async def test_slow_subscriber_is_dropped_and_others_keep_receiving(session):
    config = HubConfig(subscriber_queue=4, rate_per_second=10_000, rate_burst=10_000)
    async with HubServer(port=0, config=config) as server:
        # A client that subscribes and then never reads.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /v1/app/a HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await eventually(lambda: len(server.hub.subscribers) == 1, "the slow subscriber")
        fast = await subscribe(session, server.url + "/v1/app/b")
        payload = json.dumps({"pad": "y" * 60_000})
        for _ in range(2_000):
            async with session.post(server.url + "/v1/app/a", data=payload) as resp:
                assert resp.status == 200
            if server.hub.metrics.subscribers_dropped:
                break
        assert server.hub.metrics.subscribers_dropped == 1
        assert len(server.hub.subscribers) == 1
        await session.post(server.url + "/v1/app/b", json={"fast": True})
        assert await fast.next_message() == {"fast": True}
        writer.close()
        fast.response.close()


async def test_metrics_count_subscribers_messages_bytes_and_rejections(hub, session):
    stream = await subscribe(session, hub.url + "/v1/app/a,b")
    await session.post(hub.url + "/v1/app/a", data=b'{"x": 1}')
    await stream.next_message()
    await session.post(hub.url + "/v1/app/a", data=b"{")
    await eventually(lambda: hub.hub.metrics.messages_delivered == 1, "delivery count")
    async with session.get(hub.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert "# TYPE hub_subscribers gauge" in text
    assert "hub_subscribers 1\n" in text
    assert "hub_channels 2\n" in text
    assert "hub_messages_received_total 1\n" in text
    assert "hub_messages_delivered_total 1\n" in text
    assert "hub_bytes_received_total 8\n" in text
    frame = b'data: {"x":1}\n\n'
    assert f"hub_bytes_delivered_total {len(frame)}\n" in text
    assert 'hub_rejections_total{reason="bad_json"} 1\n' in text
    stream.response.close()


# -- names ------------------------------------------------------------------------------------


async def put_record(session, base: str, record: dict) -> tuple[int, dict]:
    async with session.put(f"{base}/names/{record['name']}", json=record) as resp:
        return resp.status, await resp.json()


async def test_names_are_first_come_first_served_and_updatable_by_owner(hub, session):
    owner, other = secret_key(), secret_key()
    now = int(time.time())
    first = names.sign_record("my-show", owner, now - 10).to_json()
    assert await put_record(session, hub.url, first) == (201, first)
    async with session.get(hub.url + "/names/my-show") as resp:
        assert resp.status == 200
        assert names.parse_verified(await resp.json()).key == owner[32:]
    # Re-sending the same record is harmless.
    assert (await put_record(session, hub.url, first))[0] == 200
    status, body = await put_record(session, hub.url, names.sign_record("my-show", other, now).to_json())
    assert status == 409 and "another key" in body["error"]
    status, _ = await put_record(session, hub.url, names.sign_record("my-show", owner, now - 20).to_json())
    assert status == 409
    newer = names.sign_record("my-show", owner, now).to_json()
    assert await put_record(session, hub.url, newer) == (200, newer)
    async with session.get(hub.url + "/names/my-show") as resp:
        assert await resp.json() == newer


async def test_forged_and_malformed_name_records_are_refused(hub, session):
    owner, attacker = secret_key(), secret_key()
    record = names.sign_record("show", owner, int(time.time())).to_json()
    forged = {**record, "key": attacker[32:].hex()}
    status, body = await put_record(session, hub.url, forged)
    assert status == 403 and "bad signature" in body["error"]
    for bad in ({**record, "time": "soon"}, {**record, "key": "zz"}, {"name": "show"}):
        assert (await put_record(session, hub.url, bad))[0] == 400
    future = names.sign_record("show", owner, int(time.time()) + 86_400).to_json()
    assert (await put_record(session, hub.url, future))[0] == 400
    async with session.put(hub.url + "/names/elsewhere", json=record) as resp:
        assert resp.status == 400
    async with session.put(hub.url + "/names/show", data=b"{oops") as resp:
        assert resp.status == 400
    async with session.get(hub.url + "/names/show") as resp:
        assert resp.status == 404
    async with session.get(hub.url + "/names/Bad_Name!") as resp:
        assert resp.status == 400


# -- several hubs on one Redis ---------------------------------------------------------------


async def test_two_hubs_on_redis_share_channels_without_duplicates(session, redis_url):  # noqa: F811
    one = await start_hub(redis_url=redis_url)
    two = await start_hub(redis_url=redis_url)
    try:
        on_two = await subscribe(session, two.url + "/v1/app/a")
        on_one = await subscribe(session, one.url + "/v1/app/a")
        await session.post(one.url + "/v1/app/a", json={"n": 1})
        await session.post(two.url + "/v1/app/a", json={"n": 2})
        # Each subscriber gets both, once; messages posted at different hubs have no order
        # between them (one crosses Redis to reach the other hub's subscribers).
        for sub in (on_two, on_one):
            got = [await sub.next_message(), await sub.next_message()]
            assert sorted(m["n"] for m in got) == [1, 2]
    finally:
        await one.stop()
        await two.stop()


async def test_two_hubs_on_redis_agree_on_names(session, redis_url):  # noqa: F811
    one = await start_hub(redis_url=redis_url)
    two = await start_hub(redis_url=redis_url)
    try:
        owner, other = secret_key(), secret_key()
        record = names.sign_record("shared", owner, int(time.time())).to_json()
        assert (await put_record(session, one.url, record))[0] == 201
        async with session.get(two.url + "/names/shared") as resp:
            assert await resp.json() == record
        claim = names.sign_record("shared", other, int(time.time()) + 1).to_json()
        assert (await put_record(session, two.url, claim))[0] == 409
        update = names.sign_record("shared", owner, int(time.time()) + 1).to_json()
        assert (await put_record(session, two.url, update))[0] == 200
        async with session.get(one.url + "/names/shared") as resp:
            assert await resp.json() == update
    finally:
        await one.stop()
        await two.stop()


async def test_concurrent_claims_on_one_name_through_two_hubs_have_one_winner(session, redis_url):  # noqa: F811
    one = await start_hub(redis_url=redis_url)
    two = await start_hub(redis_url=redis_url)
    try:
        now = int(time.time())
        claims = [names.sign_record("contested", secret_key(), now).to_json() for _ in range(12)]
        results = await asyncio.gather(*(
            put_record(session, (one, two)[i % 2].url, claim) for i, claim in enumerate(claims)
        ))
        statuses = sorted(status for status, _ in results)
        assert statuses == [201] + [409] * (len(claims) - 1)
        winner = next(body for status, body in results if status == 201)
        for server in (one, two):
            async with session.get(server.url + "/names/contested") as resp:
                assert await resp.json() == winner
    finally:
        await one.stop()
        await two.stop()


async def test_hubs_keep_working_through_a_redis_restart(session, redis_server: RedisProcess):  # noqa: F811
    one = await start_hub(redis_url=redis_server.url)
    two = await start_hub(redis_url=redis_server.url)
    try:
        on_one = await subscribe(session, one.url + "/v1/app/a")
        on_two = await subscribe(session, two.url + "/v1/app/a")
        await asyncio.to_thread(redis_server.stop)
        await eventually(lambda: not two.hub.bridge.connected.is_set(), "hub two to notice")
        # Local delivery goes on while Redis is away.
        async with session.post(one.url + "/v1/app/a", json={"during": 1}) as resp:
            assert resp.status == 200
        assert await on_one.next_message() == {"during": 1}
        async with session.get(one.url + "/names/x") as resp:
            assert resp.status == 503
        await asyncio.to_thread(redis_server.start)
        for server in (one, two):
            await asyncio.wait_for(server.hub.bridge.connected.wait(), TIMEOUT)
        await session.post(one.url + "/v1/app/a", json={"after": 1})
        assert await on_two.next_message() == {"after": 1}
        assert await on_one.next_message() == {"after": 1}
    finally:
        await one.stop()
        await two.stop()


# -- the command ------------------------------------------------------------------------------


def run_command(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


async def test_streamer_hub_command_serves_until_terminated(session):
    process = run_command("hub", "--host", "127.0.0.1", "--port", "0")
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), TIMEOUT)
        assert line.startswith("hub listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        async with session.get(url + "/") as resp:
            assert (await resp.json())["name"] == "swarmcast-hub"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_streamer_hub_without_reachable_redis_says_so_in_one_line():
    process = run_command("hub", "--port", "0", "--redis", "redis://127.0.0.1:1")
    _, stderr = await asyncio.to_thread(process.communicate, timeout=TIMEOUT)
    assert process.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamer: error: cannot reach Redis"), stderr


# -- compatibility with the npm signalhub client ----------------------------------------------

SIGNALHUB_DIR = ROOT / "bench" / "out" / "signalhub"
JS_CLIENT = """
const signalhub = require('signalhub')
const hub = signalhub('swarmcast', [process.argv[2]])
const stream = hub.subscribe('room')
stream.on('open', () => {
  console.log(JSON.stringify({event: 'open'}))
  hub.broadcast('room', {from: 'js'}, (err) => console.log(JSON.stringify({event: 'sent', err: String(err || '')})))
})
stream.on('data', (message) => console.log(JSON.stringify({event: 'data', message})))
setTimeout(() => process.exit(3), 20000)
"""


def signalhub_modules() -> Path:
    """node_modules holding npm signalhub 4 (installed once, shared with bench/bench_hub.py)."""
    modules = SIGNALHUB_DIR / "node_modules"
    if not (modules / "signalhub" / "package.json").exists():
        SIGNALHUB_DIR.mkdir(parents=True, exist_ok=True)
        (SIGNALHUB_DIR / "package.json").write_text('{"private": true}\n')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "signalhub@4"],
            cwd=SIGNALHUB_DIR, check=True, timeout=300,
        )
    return modules


async def test_npm_signalhub_client_works_against_our_hub(hub, session, tmp_path):
    modules = await asyncio.to_thread(signalhub_modules)
    script = tmp_path / "client.js"
    script.write_text(JS_CLIENT)
    node = await asyncio.create_subprocess_exec(
        "node", str(script), hub.url, stdout=subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    try:

        async def event() -> dict:
            line = await asyncio.wait_for(node.stdout.readline(), TIMEOUT)
            assert line, "the JS client exited"
            return json.loads(line)

        seen = [await event()]
        assert seen[0] == {"event": "open"}
        await session.post(hub.url + "/v1/swarmcast/room", json={"from": "python"})
        # Both messages arrive and the JS broadcast reports back, in any order.
        while [e["event"] for e in seen].count("data") < 2 or {"event": "sent", "err": ""} not in seen:
            seen.append(await event())
        messages = [e["message"] for e in seen if e["event"] == "data"]
        assert sorted(m["from"] for m in messages) == ["js", "python"]
    finally:
        node.kill()
        await node.wait()
