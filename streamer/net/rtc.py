"""One aiortc RTCPeerConnection per neighbour, its one reliable ordered data channel wrapped as a
MessageChannel (with end-to-end backpressure and keepalive). Which ICE servers it uses is
streamer.net.iceservers', how aioice uses them streamer.net.ice's.
It never looks inside the caller's binary messages and never trickles ICE (SDP travels whole).
"""

# Binary data-channel messages are the caller's, text ones the flow control's (streamer.core.credit
# says what they mean; channel.CreditedChannel drives it).

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from streamer.core.errors import ChannelClosed, NetworkError
from streamer.core.membership import MAX_SDP
from streamer.net.channel import (
    DEFAULT_WINDOW,
    IDLE_TIMEOUT_S,
    KEEPALIVE_S,
    CreditedChannel,
)

LABEL = "swarmcast"
HIGH_WATER = 1024 * 1024  # bytes queued in aiortc above which send() waits ...
LOW_WATER = 256 * 1024  # ... until the queue drains below this (bufferedamountlow)


def _sha256_fingerprint(fingerprints: list) -> bytes:
    for f in fingerprints:
        if f.algorithm.lower() == "sha-256":
            return bytes.fromhex(f.value.replace(":", ""))
    raise NetworkError("the peer's SDP has no sha-256 DTLS fingerprint; it cannot be verified")


class RtcChannel(CreditedChannel):
    """A MessageChannel over one open RTCDataChannel; owns the peer connection and closes it.
    Flow control (credits, keepalive, idle timeout) is CreditedChannel's; on top, send() waits
    while aiortc holds more than HIGH_WATER bytes."""

    def __init__(
        self,
        peer_id: str,
        pc: RTCPeerConnection,
        dc: RTCDataChannel,
        *,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        super().__init__(peer_id, window=window, keepalive=keepalive, idle_timeout=idle_timeout)
        self._pc = pc
        self._dc = dc
        dc.bufferedAmountLowThreshold = LOW_WATER
        dc.on("message", self._deliver)
        dc.on("bufferedamountlow", self._writable.set)
        dc.on("close", self._on_dc_close)
        pc.on("connectionstatechange", self._on_state)

    @property
    def buffered_amount(self) -> int:
        return self._dc.bufferedAmount

    def _transport_busy(self) -> bool:
        return self._dc.bufferedAmount > HIGH_WATER

    def _transmit(self, data: bytes | str) -> None:
        try:
            self._dc.send(data)
        except Exception as e:  # aiortc raises InvalidStateError and friends once it is closing
            self._mark_closed(f"send failed: {e.__class__.__name__}")
            raise ChannelClosed(f"channel to {self.peer_id} is closed") from None

    def _on_dc_close(self) -> None:
        if not self._closed:
            self._mark_closed("closed by peer")
            asyncio.ensure_future(self._pc.close())

    def _on_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._mark_closed(f"connection {self._pc.connectionState}")
            asyncio.ensure_future(self._pc.close())

    async def close(self, reason: str | None = None) -> None:
        was_open = not self._closed
        self._mark_closed(reason or "closed locally")
        if was_open and self._dc.readyState == "open":
            # Let what we already sent leave before the stream reset, then give the reset a moment
            # to reach the peer so it sees a clean close rather than a dead connection.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain(), 5.0)
            closed = asyncio.Event()
            self._dc.on("close", closed.set)
            self._dc.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closed.wait(), 2.0)
        await self._pc.close()

    async def _drain(self) -> None:
        if self._dc.bufferedAmount == 0:
            return
        drained = asyncio.Event()
        self._dc.bufferedAmountLowThreshold = 0
        self._dc.on("bufferedamountlow", drained.set)
        self._dc.on("close", drained.set)
        await drained.wait()


class RtcPeer:
    """Negotiates one peer connection: the offerer calls offer() then accept(answer), the answerer
    calls answer(offer); both then await channel(). SDP is whole (ICE gathering completes first)."""

    def __init__(
        self,
        peer_id: str,
        *,
        initiator: bool,
        ice_servers: list[RTCIceServer] | None = None,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.peer_id = peer_id
        self.initiator = initiator
        self._window, self._keepalive, self._idle_timeout = window, keepalive, idle_timeout
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        # The channel wraps the data channel the moment it opens, so no early message is lost.
        self._ready: asyncio.Future[RtcChannel] = asyncio.get_running_loop().create_future()
        self._remote_sdp: str | None = None
        self._pc.on("connectionstatechange", self._on_state)
        from streamer.net.ice import patch_aioice

        patch_aioice()  # once per process: prefer direct routes, skip dead STUN/TURN servers
        if initiator:
            dc = self._pc.createDataChannel(LABEL, ordered=True)
            dc.on("open", lambda: self._resolve(dc))
        else:
            self._pc.on("datachannel", self._on_datachannel)

    def _resolve(self, dc: RTCDataChannel) -> None:
        if not self._ready.done():
            channel = RtcChannel(
                self.peer_id, self._pc, dc, window=self._window,
                keepalive=self._keepalive, idle_timeout=self._idle_timeout,
            )  # fmt: skip
            self._ready.set_result(channel)

    def _on_datachannel(self, dc: RTCDataChannel) -> None:
        if dc.label != LABEL or self._ready.done():
            dc.close()
            return
        self._resolve(dc)

    def _on_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed") and not self._ready.done():
            self._ready.set_exception(
                NetworkError(f"connection to {self.peer_id} {self._pc.connectionState}")
            )

    async def offer(self) -> str:
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return self._pc.localDescription.sdp

    async def answer(self, offer_sdp: str) -> str:
        await self._set_remote(offer_sdp, "offer")
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        return self._pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self._set_remote(answer_sdp, "answer")

    async def _set_remote(self, sdp: str, kind: str) -> None:
        if not isinstance(sdp, str) or len(sdp) > MAX_SDP:
            raise NetworkError(
                f"bad SDP {kind} from {self.peer_id}: not a string of <= {MAX_SDP} bytes"
            )
        try:
            parsed = SessionDescription.parse(sdp)
            if not any(m.kind == "application" and m.dtls for m in parsed.media):
                raise ValueError("no data channel section")
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except NetworkError:
            raise
        except Exception as e:  # aiortc's SDP parser raises arbitrary types on garbage input
            raise NetworkError(
                f"bad SDP {kind} from {self.peer_id}: {e.__class__.__name__}"
            ) from None
        self._remote_sdp = sdp

    def handshake_hash(self) -> bytes:
        """BLAKE2b-256 of both DTLS sha-256 fingerprints, sorted and concatenated: the same value on
        both ends, and different if anyone in between swapped the SDP."""
        if self._remote_sdp is None:
            raise RuntimeError("handshake_hash() needs the remote description")
        sctp = self._pc.sctp
        if sctp is None:
            raise RuntimeError("handshake_hash() needs a negotiated data channel transport")
        local = _sha256_fingerprint(sctp.transport.getLocalParameters().fingerprints)
        remote = None
        for media in SessionDescription.parse(self._remote_sdp).media:
            if media.kind == "application" and media.dtls:
                remote = _sha256_fingerprint(media.dtls.fingerprints)
                break
        if remote is None:
            raise NetworkError(f"the SDP of {self.peer_id} has no DTLS fingerprint")
        return hashlib.blake2b(b"".join(sorted((local, remote))), digest_size=32).digest()

    async def channel(self, timeout: float = 15.0) -> RtcChannel:
        """Wait for the data channel to open; NetworkError on timeout or connection failure."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            raise NetworkError(
                f"no data channel to {self.peer_id} within {timeout:.0f} s"
            ) from None

    async def close(self) -> None:
        """Abandon the negotiation, or close the channel if it opened."""
        if self._ready.done() and not self._ready.cancelled() and self._ready.exception() is None:
            await self._ready.result().close()
        else:
            self._ready.cancel()
            await self._pc.close()
