"""The exception tree of swarmcast. Every error a user can cause is a SwarmcastError whose message
is one line saying what is wrong and what to do; the CLIs print it and exit non-zero.

    SwarmcastError
    ├── UsageError            bad command-line value
    ├── KeyFileError          missing, unreadable or malformed key file
    ├── FeedError             a feed directory problem
    │   ├── NotAFeedError     the directory holds no feed
    │   ├── KeyMismatchError  the key does not belong to this feed
    │   ├── CorruptFeedError  files are truncated or damaged
    │   ├── NotWritableError  append without the secret key
    │   ├── BlockNotFoundError  index out of range or block not present
    │   └── LocalStorageError  our own disk refused a read or write (full, too large, I/O error):
    │                          our fault, never the peer's
    ├── ProofError            a proof from a peer did not verify (the peer is at fault)
    ├── WireError             bytes from a peer that do not decode (the peer is at fault)
    ├── MediaError            a source that cannot be opened, decoded or encoded
    └── NetworkError          hub or peer connection problems
"""

from __future__ import annotations


class SwarmcastError(Exception):
    """Base of all errors a user or a remote peer can cause."""


class UsageError(SwarmcastError):
    """A command-line value is unusable."""


class KeyFileError(SwarmcastError):
    """A key file is missing, unreadable or malformed."""


class FeedError(SwarmcastError):
    """A feed directory cannot be used as asked."""


class NotAFeedError(FeedError):
    """The directory holds no feed."""


class KeyMismatchError(FeedError):
    """A key does not belong to the feed it was used with."""


class CorruptFeedError(FeedError):
    """Feed files are truncated or damaged."""


class NotWritableError(FeedError):
    """An append was attempted on a feed opened without its secret key."""


class BlockNotFoundError(FeedError):
    """A block index is out of range or the block is not present locally."""


class LocalStorageError(FeedError):
    """Our own disk refused to store or read feed data (no space, file size limit, I/O error).

    Never the fault of the peer whose data we were storing: replication stops and reports it."""


class ProofError(SwarmcastError):
    """A proof received from a peer does not verify."""


class WireError(SwarmcastError):
    """Bytes received from a peer do not decode as a protocol message."""


class MediaError(SwarmcastError):
    """A media source cannot be opened, decoded or encoded."""


class NetworkError(SwarmcastError):
    """A hub or peer connection failed."""
