"""File checksums, read in 8 MiB blocks into one reused buffer (hashers release the GIL while they work).

``sha256`` names dataset shards and models; ``blake3`` (cryptographic too, ~3x faster here) fingerprints
the preprocess inputs, which can be many gigabytes (BENCHMARKS.md, preprocessing).
"""

from __future__ import annotations

import hashlib
import os

BLOCK_BYTES = 8 << 20


def _hasher(algorithm: str):
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    return hashlib.new(algorithm)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path`` with ``algorithm`` ("sha256", "blake3" or any hashlib name)."""
    digest = _hasher(algorithm)
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
