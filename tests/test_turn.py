"""Short-lived TURN credentials from the hub (coturn's use-auth-secret REST scheme), checked
against a real coturn: hub-issued credentials allocate and relay, a wrong secret and an expired
credential are refused and named in one line, and a node leaves a failing TURN server out of its
dials while keeping its STUN servers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import sys
import time
from pathlib import Path

import pytest
from aioice import stun, turn

from streamer.core.errors import KeyFileError
from streamer.hub import HubConfig, start_hub
from streamer.hub.turn import IceConfig, read_turn_secret, turn_credentials
from streamer.net.hubclient import HubClient
from streamer.net.iceservers import IceServers, probe_turn, servers_from_answer, user_ice_servers
from tests.fixtures_net import Coturn, coturn, free_port  # noqa: F401 (fixture)

SECRET = b"0123456789abcdef0123456789abcdef"


def test_credentials_follow_coturns_rest_scheme() -> None:
    username, password = turn_credentials(SECRET, 600, 1_700_000_000.7, "peer1")
    assert username == "1700000600:peer1"
    expected = base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha1).digest())
    assert password == expected.decode()
    # The worked value of docs/signaling.md.
    assert turn_credentials(b"example-secret-0123456789", 0, 1700021600, "9f86d081884c7d65") == (
        "1700021600:9f86d081884c7d65", "WbjO5gr7vuv9TSEPXpmz+bpb42E="
    )
    # Fresh random ids otherwise: two answers never share a username.
    assert turn_credentials(SECRET, 600, 0)[0] != turn_credentials(SECRET, 600, 0)[0]


def test_ice_answer_has_the_rtcconfiguration_shape() -> None:
    config = IceConfig(("stun:s.example:3478",), ("turn:t.example:3478",), SECRET, ttl=900)
    body = config.answer(1000.0)
    stun_entry, turn_entry = body["iceServers"]
    assert stun_entry == {"urls": ["stun:s.example:3478"]}
    assert turn_entry["urls"] == ["turn:t.example:3478"]
    assert turn_entry["username"].startswith("1900:")
    assert body["ttl"] == 900 and body["expires"] == 1900
    servers, expires = servers_from_answer(body)
    assert [s.urls for s in servers] == [["stun:s.example:3478"], ["turn:t.example:3478"]]
    assert expires == 1900
    assert IceConfig().answer(0) == {"iceServers": []}


def test_turn_secret_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "turn.secret"
    path.write_text(SECRET.decode() + "\n")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others.*chmod 600"):
        read_turn_secret(path)
    path.chmod(0o600)
    assert read_turn_secret(path) == SECRET
    path.write_text("short\n")
    with pytest.raises(KeyFileError, match="at least 16"):
        read_turn_secret(path)
    with pytest.raises(KeyFileError, match="does not exist"):
        read_turn_secret(tmp_path / "missing")


def test_user_ice_servers_win_over_the_hubs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARMCAST_ICE_SERVERS", raising=False)
    assert user_ice_servers(None) is None  # ask the hub
    assert user_ice_servers("none") == []
    monkeypatch.setenv("SWARMCAST_ICE_SERVERS", "stun:a.example:3478")
    assert [s.urls for s in user_ice_servers(None) or []] == ["stun:a.example:3478"]
    assert [s.urls for s in user_ice_servers("stun:b.example:1") or []] == ["stun:b.example:1"]


async def test_hub_serves_ice_servers_with_fresh_credentials() -> None:
    config = HubConfig(ice=IceConfig(("stun:127.0.0.1:3478",), ("turn:127.0.0.1:3478",), SECRET))
    hub = await start_hub(config=config)
    try:
        async with HubClient(hub.url) as client:
            first = await client.ice()
            second = await client.ice()
            async with client.session().get(hub.url + "/v1/ice") as resp:
                assert resp.headers["Cache-Control"] == "no-store"
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert first is not None and second is not None
        assert first["iceServers"][1]["username"] != second["iceServers"][1]["username"]
        assert abs(first["expires"] - (time.time() + config.ice.ttl)) < 60
        assert "hub_ice_served_total 3" in hub.hub.render_metrics()
    finally:
        await hub.stop()


async def test_hub_credentials_allocate_on_coturn_and_carry_data(coturn: Coturn) -> None:  # noqa: F811
    hub = await start_hub(config=HubConfig(ice=IceConfig((), (coturn.url,), coturn.secret)))
    try:
        async with HubClient(hub.url) as client:
            servers, _ = servers_from_answer(await client.ice())
    finally:
        await hub.stop()
    (server,) = servers
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait((data, addr))

    peer, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    port = int(coturn.url.rsplit(":", 1)[1])
    relay, _ = await turn.create_turn_endpoint(
        Receiver, ("127.0.0.1", port), server.username, server.credential
    )
    try:
        relayed = relay.get_extra_info("sockname")
        relay.sendto(b"through the relay", peer.get_extra_info("sockname"))
        data, source = await asyncio.wait_for(received.get(), 10.0)
        assert data == b"through the relay"
        assert source == tuple(relayed)  # it came out of coturn's relay address
    finally:
        relay.close()
        peer.close()


async def test_wrong_secret_and_expired_credentials_are_refused_and_named(coturn: Coturn) -> None:  # noqa: F811
    port = int(coturn.url.rsplit(":", 1)[1])
    wrong_user, wrong_password = turn_credentials(b"not-the-secret-of-this-server", 600, time.time())
    with pytest.raises(stun.TransactionFailed) as refused:
        await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, ("127.0.0.1", port), wrong_user, wrong_password
        )
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401
    problem = await probe_turn(coturn.url, wrong_user, wrong_password)
    assert problem is not None and "--turn-secret" in problem and "static-auth-secret" in problem

    expired_user, expired_password = coturn.credentials(ttl=-120)
    with pytest.raises(stun.TransactionFailed):
        await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, ("127.0.0.1", port), expired_user, expired_password
        )
    problem = await probe_turn(coturn.url, expired_user, expired_password)
    assert problem is not None and "expired" in problem
    assert "\n" not in problem


async def test_a_node_leaves_out_a_failing_turn_server_and_keeps_stun(
    coturn: Coturn, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    dead = f"turn:127.0.0.1:{free_port()}"
    config = IceConfig(("stun:127.0.0.1:3478",), (coturn.url, dead), b"wrong-secret-wrong-secret")
    hub = await start_hub(config=HubConfig(ice=config))
    try:
        async with HubClient(hub.url) as client:
            ice = IceServers(None, client.ice)
            with caplog.at_level(logging.WARNING, logger="streamer.net.ice"):
                await ice.wait_ready(30.0)
                servers = ice.current()
            await ice.close()
    finally:
        await hub.stop()
    assert [s.urls for s in servers] == [["stun:127.0.0.1:3478"]]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    address = coturn.url.removeprefix("turn:")
    assert any(f"TURN server {address} " in m and "--turn-secret" in m for m in lines)
    assert any(dead.removeprefix("turn:") in m and "did not answer" in m for m in lines)


async def test_hub_command_names_a_wrong_secret_and_keeps_serving(
    coturn: Coturn, tmp_path: Path  # noqa: F811
) -> None:
    secret = tmp_path / "turn.secret"
    secret.write_text("this-is-not-the-secret-of-coturn\n")
    secret.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer", "hub", "--port", "0", "--turn", coturn.url,
        "--turn-secret", str(secret), "--stun", coturn.url.replace("turn:", "stun:"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30.0)).decode().split()[-1]
        line = (await asyncio.wait_for(proc.stderr.readline(), 30.0)).decode()
        assert "refused the hub's credentials" in line and "--turn-secret" in line
        async with HubClient(url) as client:
            body = await client.ice()
        assert body is not None and len(body["iceServers"]) == 2
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--turn", "turn:127.0.0.1:3478"], "--turn needs --turn-secret"),
        (["--turn", "turn:u:p@127.0.0.1:3478", "--turn-secret", "x"], "carries a user name"),
        (["--stun", "turn:127.0.0.1:3478"], "must start with stun:"),
        (["--turn", "turn:127.0.0.1:3478", "--turn-secret", "/nonexistent/s"], "does not exist"),
    ],
)
async def test_hub_command_refuses_bad_turn_options(args: list[str], message: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamer", "hub", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30.0)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
