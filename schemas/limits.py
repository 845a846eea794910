"""Size and shape limits of the wire format, checked before and during decoding."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # whole encoded message; checked before any decoding
# A message larger than one record travels as `MessageChunk`s (`schemas.chunks`): each carries
# at most CHUNK_BYTES of the whole encoding, and the reassembled whole is at most
# MAX_ASSEMBLED_BYTES (a 256 MB part with room to spare).
CHUNK_BYTES = 4 * 1024 * 1024
MAX_ASSEMBLED_BYTES = 1024 * 1024 * 1024
MAX_CHUNKS = MAX_ASSEMBLED_BYTES // (64 * 1024)  # chunks of one whole, at 64 KiB at least
MAX_DEAD_LETTER_ORIGINAL = 64 * 1024  # bytes of a rejected input kept in its DeadLetter
MAX_ID_CHARS = 128
MAX_REASON_CHARS = 256
MAX_STR_BYTES = 64 * 1024  # UTF-8 bytes of any one string (msgpack str) in a message
MAX_EXPERTS = 1024
MAX_PARTS = MAX_EXPERTS + 1
MAX_TENSORS_PER_PART = 32
MAX_TENSOR_RANK = 4
MAX_TENSOR_ELEMENTS = 2**24
MAX_DEPTH = 8  # nesting of maps/arrays inside one message
# Entries of any one map or array: a part's round marker names every device assigned to it,
# and a round of a 10,000+-device fleet assigns `shared` to all of them.
MAX_CONTAINER_LEN = 2**16
# Totals over one message, so a small hostile input cannot unpack into millions of objects.
MAX_CONTAINERS = 2**14  # maps and arrays
MAX_MAP_ENTRIES = 2**17  # entries of all maps together
