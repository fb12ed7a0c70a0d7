"""A hostile hub client for tests: learns a swarm's peer ids from the hub (it needs only the
discovery key, as anyone on the hub) and every few seconds posts to each of them forged hello
with evict, full, offer, answer, reject and bye messages from made-up and from real peer ids.

Without --key its messages carry no valid proof (an outsider); with --key (an insider on a named
stream, where anyone can resolve the key) it makes a node identity for each made-up id, seals
its messages with valid MACs and signatures, and announces each made-up id first so that it
looks like an isolated newcomer; messages in the name of real peers get a valid MAC and its own
signature (it cannot make theirs).

    python -m tests.storm --hub URL --dk HEX [--key HEX] [--interval 5] [--duration S] [--armed]

With --armed it only listens (learning ids while peers join and announce) until SIGUSR1 starts
the storm. Prints "storm listening" when subscribed, and one JSON line of counts to stdout when
it stops (SIGTERM or --duration).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from typing import Any

from streamer.core import crypto
from streamer.core.signal import SignalAuth, compute_mac, mac_input, signal_key
from streamer.net.hubclient import HubClient

APP = "swarmcast"
# A syntactically plausible offer: a receiver with room starts a connection it cannot finish.
FAKE_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 127.0.0.1\r\n"
    "a=mid:0\r\na=sctp-port:5000\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
)


class Storm:
    def __init__(self, hub: str, dk: bytes, key: bytes | None) -> None:
        self.client = HubClient(hub)
        self.dk = dk.hex()
        self.key = key
        self.dk_bytes = dk
        self.peers: set[str] = set()
        self.own: set[str] = set()  # made-up ids (with --key: ids of our own identities)
        self.listening = asyncio.Event()
        self.counts: dict[str, int] = {"posted": 0, "failed": 0, "rounds": 0}

    def identity(self) -> SignalAuth | None:
        """A fresh node identity (with --key), whose peer id becomes a made-up sender."""
        if self.key is None:
            return None
        auth = SignalAuth(self.key, self.dk_bytes)
        self.own.add(auth.peer_id)
        return auth

    def _seal(self, message: dict[str, Any], auth: SignalAuth | None) -> dict[str, Any]:
        now, nonce = int(time.time() * 1000), secrets.token_hex(8)
        if self.key is None:
            return message
        if auth is not None:
            return auth.seal(message, now, nonce)
        # In a real peer's name: a valid MAC, but a signature by a key that is not theirs.
        forger = SignalAuth(self.key, self.dk_bytes)
        sealed = {**message, "ts": now, "nonce": nonce}
        data = mac_input(self.dk_bytes, sealed)
        assert data is not None
        sealed["pk"] = forger.identity.public_key.hex()
        sealed["mac"] = compute_mac(signal_key(self.key), self.dk_bytes, sealed)
        sealed["sig"] = crypto.sign(data, forger.identity.secret_key).hex()
        return sealed

    async def _post(
        self, channel: str, message: dict[str, Any], auth: SignalAuth | None = None
    ) -> None:
        try:
            await self.client.broadcast(APP, channel, self._seal(message, auth))
            self.counts["posted"] += 1
        except Exception:
            self.counts["failed"] += 1

    async def listen(self) -> None:
        """Learn peer ids from the broadcast channel and from every addressed channel seen."""
        channels = [self.dk]
        while True:
            sub = self.client.subscribe(APP, channels)
            await sub.wait_connected()
            self.listening.set()
            try:
                async for message in sub:
                    sender = message.get("from") if isinstance(message, dict) else None
                    if (isinstance(sender, str) and len(sender) == 32 and sender not in self.peers
                            and sender not in self.own):
                        self.peers.add(sender)
                        if len(channels) < 64:
                            channels.append(f"{self.dk}.{sender}")
                            break  # subscribe again with the new channel
            finally:
                await sub.aclose()

    async def round(self) -> None:
        self.counts["rounds"] += 1
        real = sorted(self.peers)
        posts = []
        for peer in real:
            auth = self.identity()
            fake = auth.peer_id if auth is not None else secrets.token_hex(16)
            self.own.add(fake)
            if auth is not None:
                # Look like an isolated newcomer: announce, then ask for room.
                posts.append(self._post(self.dk, {"type": "hello", "from": fake, "n": 0}, auth))
            to = f"{self.dk}.{peer}"
            posts.append(self._post(
                to, {"type": "hello", "from": fake, "to": peer, "n": 0, "evict": True}, auth
            ))
            posts.append(self._post(to, {"type": "full", "from": fake, "to": peer}, auth))
            # An offer from a lower id than the peer's, so that it would answer.
            low = self.identity()
            for _ in range(1000):
                if low is None or low.peer_id < peer:
                    break
                self.own.discard(low.peer_id)
                low = self.identity()
            low_id = low.peer_id if low is not None else "0" * 31 + secrets.choice("0123456789")
            posts.append(self._post(
                to, {"type": "offer", "from": low_id, "to": peer, "sdp": FAKE_SDP}, low
            ))
            for other in real:
                if other != peer:
                    posts.append(self._post(
                        to, {"type": "answer", "from": other, "to": peer, "sdp": FAKE_SDP}
                    ))
                    posts.append(self._post(to, {"type": "reject", "from": other, "to": peer}))
            posts.append(self._post(self.dk, {"type": "bye", "from": peer}))
        await asyncio.gather(*posts)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="storm")
    parser.add_argument("--hub", required=True)
    parser.add_argument("--dk", help="discovery key (hex)")
    parser.add_argument("--key", help="stream key (hex): seal messages with valid MACs")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--armed", action="store_true", help="wait for SIGUSR1 to start")
    args = parser.parse_args(argv)
    key = bytes.fromhex(args.key) if args.key else None
    dk = crypto.discovery_key(key) if key is not None else bytes.fromhex(args.dk)
    storm = Storm(args.hub, dk, key)
    stop, go = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    listener = asyncio.ensure_future(storm.listen())
    await storm.listening.wait()
    print("storm listening", flush=True)
    try:
        if args.armed:
            await asyncio.wait(
                [asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        end = loop.time() + args.duration if args.duration else None
        while not stop.is_set() and (end is None or loop.time() < end):
            await storm.round()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await storm.client.close()
    print(json.dumps({**storm.counts, "peers": len(storm.peers)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
