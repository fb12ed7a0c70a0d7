"""streamer.net.ice without the lab: how a route is described, how STUN/TURN failures are put
in words, and that a failed server is named once, left out for a while, and welcomed back."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aioice import stun

from streamer.net import ice


def test_a_route_says_whether_it_is_relayed() -> None:
    direct = ice.Route("host", ("10.1.0.2", 5000), "srflx", ("198.18.0.12", 40000))
    relayed = ice.Route("relay", ("198.18.0.1", 50000), "prflx", ("198.18.0.13", 41000))
    assert not direct.relayed and relayed.relayed
    assert str(direct) == "direct (host 10.1.0.2:5000 -> srflx 198.18.0.12:40000)"
    assert str(relayed).startswith("relayed (relay 198.18.0.1:50000")


def _error_response(code: int, reason: str) -> stun.Message:
    message = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.ERROR)
    message.attributes["ERROR-CODE"] = (code, reason)
    return message


def test_failures_are_put_in_words() -> None:
    refused = stun.TransactionFailed(_error_response(401, "Unauthorized"))
    assert ice.describe_failure(refused, 0.1, "lab") == (
        "refused the credentials of user 'lab' (401 Unauthorized): check the user and password"
    )
    quota = stun.TransactionFailed(_error_response(486, "Allocation Quota Reached"))
    assert ice.describe_failure(quota, 0.1, "lab") == (
        "has no allocation left for this user (486 Allocation Quota Reached): raise its user-quota"
    )
    # A user name "<expiry>:<id>" is the hub's short-lived credential: expired, or not made with
    # the TURN server's secret.
    assert "expired at Unix time 1000 (500 s ago)" in str(
        ice.describe_failure(refused, 0.1, "1000:ab12", now=1500.0)
    )
    assert "the hub's --turn-secret differs" in str(
        ice.describe_failure(refused, 0.1, "2000:ab12", now=1500.0)
    )
    assert ice.describe_failure(stun.TransactionTimeout(), 8.0, None) == "did not answer"
    assert ice.describe_failure(OSError(101, "Network is unreachable"), 0.0, None) == (
        "cannot be reached (Network is unreachable)"
    )
    # Cut short at aioice's gathering timeout: no answer. Cut short earlier: not the server's fault.
    assert ice.describe_failure(asyncio.CancelledError(), 5.0, None) == "did not answer within 5 s"
    assert ice.describe_failure(asyncio.CancelledError(), 0.5, None) is None


def test_a_failed_server_is_named_once_left_out_then_welcomed_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ("192.0.2.7", 3478)
    clock = [1000.0]
    monkeypatch.setattr(ice.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="streamer.net.ice")
    try:
        ice.server_down("TURN", server, "did not answer within 5 s")
        ice.server_down("TURN", server, "did not answer within 5 s")
        assert ice.server_is_down("TURN", server)
        assert not ice.server_is_down("STUN", server)
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "TURN server 192.0.2.7:3478 did not answer within 5 s; connecting without it "
            "(retried every 60 s)"
        ]
        clock[0] += ice.SERVER_RETRY_S + 1
        assert not ice.server_is_down("TURN", server)  # tried again
        ice.server_up("TURN", server)
        assert caplog.records[-1].getMessage() == "TURN server 192.0.2.7:3478 works again"
    finally:
        ice.server_up("TURN", server)


def test_aioice_is_patched_once() -> None:
    assert ice.patch_aioice()
    from aioice import ice as aioice_ice

    patched = aioice_ice.Connection.check_start
    assert ice.patch_aioice()
    assert aioice_ice.Connection.check_start is patched
