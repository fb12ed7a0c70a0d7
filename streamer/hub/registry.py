"""The hub's channel registry: who listens to which channel, the subscription limits, and fan-out
of a message to every subscriber of a channel, dropping those that do not keep up.

Sans-IO: no aiohttp, no asyncio. A subscriber is any hashable object with `offer(frame) -> bool`
(False when its buffer is full); the caller ends the subscribers this registry drops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, KeysView
from typing import Generic, Protocol, TypeVar

from streamer.hub.rejections import Refused, Rejection

NAME_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")


class Sink(Protocol):
    """What the registry needs of a subscriber."""

    def offer(self, frame: bytes) -> bool:
        """Buffer `frame` for sending; False if the buffer is full."""
        ...


S = TypeVar("S", bound=Sink)


def parse_channels(tail: str) -> tuple[str, list[str]] | Refused:
    """Split the path after /v1/ ("app/a,b,...") into (app, channels), or say why it is invalid."""
    parts = tail.split("/")
    if len(parts) != 2:
        return Refused(Rejection.BAD_NAME, "use /v1/{app}/{channel}[,{channel}...]")
    app_name, channel_list = parts
    if not NAME_PART.fullmatch(app_name):
        return Refused(Rejection.BAD_NAME, _bad_part("app", app_name))
    channels = channel_list.split(",")
    for channel in channels:
        if not NAME_PART.fullmatch(channel):
            return Refused(Rejection.BAD_NAME, _bad_part("channel", channel))
    return app_name, channels


def channel_key(app_name: str, channel: str) -> str:
    """The registry's (and Redis's) name for `channel` of `app_name`: channels are per app."""
    return f"{app_name}/{channel}"


class ChannelRegistry(Generic[S]):
    """Subscribers by channel, within the hub's limits."""

    def __init__(self, max_channels_per_subscription: int, max_subscribers_per_channel: int) -> None:
        self.max_channels_per_subscription = max_channels_per_subscription
        self.max_subscribers_per_channel = max_subscribers_per_channel
        self.channels: dict[str, set[S]] = {}  # only channels with at least one subscriber
        self._subscriptions: dict[S, tuple[str, ...]] = {}  # subscriber -> its channels

    @property
    def subscribers(self) -> KeysView[S]:
        """Every current subscriber."""
        return self._subscriptions.keys()

    def subscribe(self, subscriber: S, app_name: str, channels: Iterable[str]) -> Refused | None:
        """Add `subscriber` to `channels` of `app_name` (repeats count once), or refuse it whole."""
        unique = tuple(dict.fromkeys(channel_key(app_name, c) for c in channels))
        if len(unique) > self.max_channels_per_subscription:
            return Refused(
                Rejection.TOO_MANY_CHANNELS,
                f"at most {self.max_channels_per_subscription} channels per subscription",
            )
        for channel in unique:
            if len(self.channels.get(channel, ())) >= self.max_subscribers_per_channel:
                return Refused(
                    Rejection.CHANNEL_FULL,
                    f"channel {channel} has {self.max_subscribers_per_channel} subscribers already",
                )
        self._subscriptions[subscriber] = unique
        for channel in unique:
            self.channels.setdefault(channel, set()).add(subscriber)
        return None

    def unsubscribe(self, subscriber: S) -> bool:
        """Remove `subscriber` from all its channels; False if it was not subscribed."""
        channels = self._subscriptions.pop(subscriber, None)
        if channels is None:
            return False
        for channel in channels:
            members = self.channels.get(channel)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.channels[channel]
        return True

    def publish(self, channel: str, frame: bytes) -> tuple[int, list[S]]:
        """Offer `frame` to every subscriber of `channel`.

        Returns (subscribers offered to, subscribers dropped because their buffer was full); the
        dropped ones are unsubscribed already and must be ended by the caller.
        """
        members = self.channels.get(channel)
        if not members:
            return 0, []
        count = len(members)
        slow = [s for s in members if not s.offer(frame)]
        for subscriber in slow:
            self.unsubscribe(subscriber)
        return count, slow

    def offer_all(self, frame: bytes) -> list[S]:
        """Offer `frame` (a heartbeat) to every subscriber; returns those dropped, as publish()."""
        slow = [s for s in list(self._subscriptions) if not s.offer(frame)]
        for subscriber in slow:
            self.unsubscribe(subscriber)
        return slow


def _bad_part(kind: str, value: str) -> str:
    return f"invalid {kind} name {value[:40]!r}: use 1-128 characters A-Z a-z 0-9 . _ -"
