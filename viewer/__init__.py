"""swarmcast viewer side: watch, archive, export and seed a stream."""
