"""Where the hub keeps name records: in this process (core NameRegistry) or in Redis, shared by
every hub on it. Both apply the one ownership rule, streamer.core.names.judge_claim."""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from streamer.core import names

REDIS_NAME_PREFIX = "swarmcast:name:"
# Concurrent claims on one name in Redis retry this often before the hub answers 503.
MAX_CLAIM_ATTEMPTS = 16


class NameStore(Protocol):
    """Name records by name, as canonical JSON."""

    async def get(self, name: str) -> str | None: ...

    async def put(self, record: names.NameRecord) -> names.Claim: ...


class MemoryNameStore:
    """Name records in this process only (a hub without Redis)."""

    def __init__(self, max_names: int) -> None:
        self.registry = names.NameRegistry(max_names)

    def __len__(self) -> int:
        return len(self.registry)

    async def get(self, name: str) -> str | None:
        return self.registry.get(name)

    async def put(self, record: names.NameRecord) -> names.Claim:
        return self.registry.put(record)


class RedisNameStore:
    """Name records in Redis, so every hub on the same Redis agrees on who owns a name.

    A claim is judged on the stored record and written in one optimistic transaction (WATCH,
    MULTI, EXEC): if another hub changed the record in between, the claim is judged again.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def get(self, name: str) -> str | None:
        return _text(await self._client.get(REDIS_NAME_PREFIX + name))

    async def put(self, record: names.NameRecord) -> names.Claim:
        key = REDIS_NAME_PREFIX + record.name
        async with self._client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_CLAIM_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    current = await pipe.get(key)
                    claim = names.judge_claim(_text(current), record)
                    if not claim.stores:
                        return claim
                    pipe.multi()
                    pipe.set(key, record.canonical_json())
                    await pipe.execute()
                    return claim
                except redis.exceptions.WatchError:
                    continue
        raise redis.exceptions.RedisError(f"name {record.name!r} is claimed concurrently; retry")


def _text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (the client returns bytes unless decode_responses is set)."""
    return value.decode() if isinstance(value, bytes) else value
