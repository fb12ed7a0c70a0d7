"""Sans-IO core: the Hypercore-compatible feed and the replication protocol. No asyncio, no sockets, no PyAV."""
