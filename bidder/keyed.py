"""Keyed BLAKE2b, the one hash behind notice signatures, user-id hashes and dead-letter payload hashes.

BLAKE2b takes keys of at most 64 bytes; a longer secret or salt (`openssl rand -hex 64` is 128 characters) is
hashed down to 64 bytes first, the same way everywhere, so every process derives the same hashes from it.
"""

from __future__ import annotations

import hashlib

MAX_KEY = 64  # bytes: BLAKE2b's limit


def blake2b_key(secret: bytes) -> bytes:
    """`secret` itself when BLAKE2b can take it as a key, else its BLAKE2b-512 digest."""
    return secret if len(secret) <= MAX_KEY else hashlib.blake2b(secret).digest()
