"""One rule for deriving the seeds of independent random streams from a user's seed: the stream of a batch
(by its first sample), of one purpose in one epoch, of an audit's probe. Deriving by position instead of
drawing from one generator makes each stream independent of the work done before it (a resumed run, a
distributed shard or a batch computed alone draws the same numbers)."""
from __future__ import annotations

import torch

_SEED_FACTOR = 1_000_003     # a prime: seeds s and s+1 give streams that never share a key's value
_KEY_BASE = 10_007           # a prime: keys (a, b) map to a * 10_007 + b, distinct while b < 10_007
_MOD = 2 ** 63               # torch.Generator.manual_seed takes a 64-bit value


def derive(seed: int, *keys: int) -> int:
    """The seed of the stream named by ``keys`` under ``seed``: ``seed * 1_000_003 + k`` for one key,
    ``seed * 1_000_003 + a * 10_007 + b`` for two (Horner's rule in base 10_007 for more), modulo 2**63.
    These are the numbers every release so far has drawn (a batch starting at sample ``start``:
    ``derive(seed, start)``; the trainer's stream of one purpose in one epoch: ``derive(seed, purpose, epoch)``)."""
    offset = 0
    for k in keys:
        offset = offset * _KEY_BASE + int(k)
    return (int(seed) * _SEED_FACTOR + offset) % _MOD


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded with ``derive(seed, *keys)`` (cost: nothing until drawn from)."""
    return torch.Generator().manual_seed(derive(seed, *keys))
