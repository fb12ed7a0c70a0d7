"""swarmcast broadcaster side: the signed feed, media, networking and the signaling hub."""

__version__ = "0.1.0"
