"""asyncio adapters: hub client, aiortc peers as message channels, the swarm, the replicator."""
