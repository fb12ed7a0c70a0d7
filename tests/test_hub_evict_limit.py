"""The hub bounds make-room requests per client address on its own: a few hello+evict messages
pass, a flood of them gets 429 (evict_limited), and other messages from the same address pass."""

from __future__ import annotations

import aiohttp

from streamer.hub import HubConfig, start_hub


async def test_make_room_requests_are_limited_per_address() -> None:
    hub = await start_hub(config=HubConfig(evict_per_second=0.01, evict_burst=3))
    url = f"{hub.url}/v1/swarmcast/{'a' * 64}.{'b' * 32}"
    evict = {"type": "hello", "from": "c" * 32, "to": "b" * 32, "n": 0, "evict": True}
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(5):
                async with session.post(url, json=evict) as resp:
                    statuses.append(resp.status)
            async with session.post(url, json={**evict, "evict": False}) as resp:
                other = resp.status
            async with session.post(url, json=evict) as resp:
                body = await resp.json()
        assert statuses == [200, 200, 200, 429, 429]
        assert other == 200
        assert "make-room" in body["error"]
        assert hub.hub.metrics.rejections["evict_limited"] == 3
        assert 'hub_rejections_total{reason="evict_limited"} 3' in hub.hub.render_metrics()
    finally:
        await hub.stop()
