"""Seeds derived from the run seed, so that every stage of every round draws its own stream.

A stage redone with the same recipe reproduces its samples; two rounds, or two stages of one round,
never share a stream.
"""

import hashlib


def derive_seed(*parts) -> int:
    """A 32-bit seed from any parts (run seed, round, stage name, batch index...)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")
