"""Flow control of one message channel, sans-IO: the receive-window credits, the keepalive and the
idle timeout. Sizes and the time go in; control messages to send, whether a message may be sent,
"close, and why" decisions and the next timer deadline come out. Every MessageChannel runs one.
"""

# The wire: the caller's messages are binary; this module's control messages are text beside them.
# "c<n>" grants the sender n more bytes of receive window (both ends start from the same window, so
# what a receiver buffers is bounded), "p" is a keepalive. Every message costs its length plus
# MESSAGE_OVERHEAD. A receiver grants back what its reader consumed once that reaches a quarter of
# the window. Any message (data, grant or keepalive) proves the peer alive.

from __future__ import annotations

MESSAGE_OVERHEAD = 64  # credit charged per message on top of its length, so empty ones cost too
DEFAULT_WINDOW = 4 * 1024 * 1024  # bytes a receiver buffers per channel before its sender waits
KEEPALIVE_S = 5.0  # a channel that sent nothing this long sends a keepalive
IDLE_TIMEOUT_S = 20.0  # a neighbour silent this long (no data, no keepalive) is dead
KEEPALIVE = "p"
GRANT_PREFIX = "c"

PEER_SILENT = "peer silent"
PEER_OVERRAN = "peer overran its receive window"
BAD_GRANT = "peer sent a bad window grant"


def message_cost(size: int) -> int:
    """What one message of `size` bytes counts against a receive window (both ends agree)."""
    return size + MESSAGE_OVERHEAD


class CreditWindow:
    """Both directions of one channel. The channel calls may_send() before and sent() after each
    data message it transmits, received() / control_received() for each message that arrives,
    consumed() when its reader takes a message, and tick() once deadline() has passed. A string
    returned by consumed() or tick() is a control message to transmit now; a close reason
    returned by received(), control_received() or tick() means: close the channel with it.
    `keepalive` or `idle_timeout` of math.inf turns that timer off."""

    __slots__ = (
        "window",
        "keepalive",
        "idle_timeout",
        "credit",
        "allowance",
        "unreported",
        "last_send",
        "last_recv",
    )

    def __init__(
        self,
        now: float,
        *,
        window: int = DEFAULT_WINDOW,
        keepalive: float = KEEPALIVE_S,
        idle_timeout: float = IDLE_TIMEOUT_S,
        largest_message: int = 0,
    ) -> None:
        if window < 2 * message_cost(largest_message):
            raise ValueError("the receive window must hold at least two full messages")
        if keepalive <= 0 or idle_timeout <= 0:
            raise ValueError("keepalive and idle timeout must be positive")
        self.window = window
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.credit = window  # bytes we may still send
        self.allowance = window  # bytes the peer may still send before we grant more
        self.unreported = 0  # bytes our reader consumed that we have not granted back yet
        self.last_send = now
        self.last_recv = now

    # -- sending -------------------------------------------------------------------------------

    def may_send(self, size: int) -> bool:
        """Whether a data message of `size` bytes fits the credit the peer granted."""
        return message_cost(size) <= self.credit

    def sent(self, size: int, now: float) -> None:
        """A data message of `size` bytes was transmitted (after may_send() said yes)."""
        self.credit -= message_cost(size)
        self.last_send = now

    def control_received(self, text: str, now: float) -> str | None:
        """A control message arrived: a grant adds credit (the sender may go on); None, or the
        reason to close the channel."""
        self.last_recv = now
        if not text.startswith(GRANT_PREFIX):
            return None  # a keepalive, or a control message of a later version: alive is enough
        try:
            grant = int(text[1:])
        except ValueError:
            grant = -1
        if not 0 < grant <= self.window:
            return BAD_GRANT
        self.credit += grant
        return None

    # -- receiving -----------------------------------------------------------------------------

    def received(self, size: int, now: float) -> str | None:
        """A data message of `size` bytes arrived: None, or the reason to close the channel."""
        self.last_recv = now
        self.allowance -= message_cost(size)
        return PEER_OVERRAN if self.allowance < 0 else None

    def consumed(self, size: int, now: float) -> str | None:
        """The reader took a data message of `size` bytes: the grant to send now, if one is due."""
        self.unreported += message_cost(size)
        if self.unreported < self.window // 4:
            return None
        grant, self.unreported = self.unreported, 0
        self.allowance += grant
        self.last_send = now
        return f"{GRANT_PREFIX}{grant}"

    # -- timers --------------------------------------------------------------------------------

    def deadline(self) -> float:
        """When tick() has something to do at the earliest (math.inf: never)."""
        return min(self.last_send + self.keepalive, self.last_recv + self.idle_timeout)

    def tick(self, now: float) -> tuple[str | None, str | None]:
        """(control message to send, close reason): the peer has been silent too long, or we
        have and owe it a keepalive, or neither.

        Silence is counted in time we were awake. When our own keepalive is overdue by more than
        a whole interval, this end was held up (its event loop stalled, the machine slept): the
        peer's keepalives of that time are still queued behind our timer, so the overdue time
        is not held against the peer. A peer that is really gone is then found within one idle
        timeout of our resuming."""
        overdue = now - self.last_send - self.keepalive
        if overdue > self.keepalive:
            self.last_recv = min(now, self.last_recv + overdue)
        if now - self.last_recv >= self.idle_timeout:
            return None, PEER_SILENT
        if now - self.last_send >= self.keepalive:
            self.last_send = now
            return KEEPALIVE, None
        return None, None

