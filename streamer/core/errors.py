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
    │   └── ForkMismatchError a proof made on another fork (may be stale, not malicious)
    ├── WireError             bytes from a peer that do not decode (the peer is at fault)
    ├── ProtocolViolation     a peer broke the replication protocol (the peer is at fault)
    ├── HandshakeFailed       a peer did not prove it knows the feed key
    ├── StreamFormatError     a block is not a valid stream header or segment
    ├── MediaError            a source that cannot be opened, decoded or encoded
    ├── RtmpError             an RTMP publisher broke the protocol or went away
    ├── ExportError           a stream cannot be exported as asked
    └── NetworkError          hub or peer connection problems
        ├── NameNotFoundError no hub knows the stream name
        ├── NameTakenError    the name belongs to another key
        ├── SubscriptionRefused  a hub refused a subscription request
        └── ChannelClosed     a peer channel is closed (nothing more to send or read)

    MessageTooLarge (a ValueError: a programming error, never a user's) is here too, so every
    exception class of the project lives in this one module.
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


class ForkMismatchError(ProofError):
    """A proof made on another fork that we cannot apply (may be stale rather than malicious)."""


class ProtocolViolation(SwarmcastError):
    """The peer broke the protocol (as opposed to sending a proof that does not verify)."""


class HandshakeFailed(SwarmcastError):
    """The peer did not prove it knows the feed key (or lied about being the writer)."""


class StreamFormatError(SwarmcastError):
    """A block is not a valid swarmcast stream header or segment."""


class ExportError(SwarmcastError):
    """A stream cannot be exported as asked (nothing to export, output not writable, ...)."""


class NameNotFoundError(NetworkError):
    """No hub knows the requested stream name."""


class NameTakenError(NetworkError):
    """The name belongs to another key, or the hub holds a newer record for it."""


class SubscriptionRefused(NetworkError):
    """A hub rejected a subscription request itself (as opposed to being unreachable)."""


class ChannelClosed(NetworkError):
    """The channel is closed: nothing more can be sent, and everything received has been read."""


class MessageTooLarge(ValueError):
    """A message above MAX_MESSAGE_SIZE was given to send(): the caller must frame it first."""


class RtmpError(SwarmcastError):
    """An RTMP publisher broke the protocol or went away; its connection ends (the stream waits
    for the next publisher)."""
