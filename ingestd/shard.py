"""Sharding: split the discovered market across N daemons on N machines, with no overlap.

``--shard K/N`` (1-based) keeps the contracts whose native symbol hashes to shard ``K`` under
rendezvous (highest-random-weight) hashing: every shard ``i`` in ``1..N`` scores the symbol with a
keyed BLAKE2b digest of ``(i, native)`` and the highest score wins. Consequences that matter for a
fleet:

* the assignment depends only on the symbol and ``N``: it is the same on every machine and after
  every restart (never Python's ``hash()``, which is salted per process);
* a listing or delisting moves no other symbol, and growing ``N`` to ``N + 1`` moves only the
  symbols the new shard wins (about ``1 / (N + 1)`` of them), all to the new shard;
* shards are balanced like independent uniform draws (a few percent off on 1,000+ symbols).

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from ingestd.errors import ConfigError
from ingestd.venues.binance.symbols import ContractSet

MAX_SHARDS = 1024
"""More shards than this is certainly a typo (there are a few thousand Binance symbols)."""

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# A fixed key makes the digest ours: changing it would reshuffle every deployed fleet, so don't.
_HASH_KEY = b"ingestd-shard-v1"


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → ``(2, 4)``: shard ``K`` of ``N``, 1-based, ``1 <= K <= N``.

    Raises :class:`ConfigError` (key ``shard``) with a one-line message on anything else.
    """
    m = _SHARD_RE.match(text)
    if m is None:
        raise ConfigError(f"--shard {text!r}: want K/N, e.g. 1/4 (shard K of N, 1-based)", key="shard")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= n <= MAX_SHARDS:
        raise ConfigError(f"--shard {text!r}: N must be between 1 and {MAX_SHARDS}", key="shard")
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {text!r}: K must be between 1 and N={n}", key="shard")
    return k, n


def _coerce_shard(value: Any) -> Any:
    if isinstance(value, str):
        return parse_shard(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return parse_shard(f"{value[0]}/{value[1]}")
    return value


ShardSpec = Annotated[tuple[int, int], BeforeValidator(_coerce_shard)]
"""A settings field type: accepts ``"K/N"`` (CLI, env, YAML) or ``[K, N]``; holds ``(K, N)``.

A :class:`ConfigError` raised inside is a ``ValueError``, so pydantic reports it like any other
invalid value.
"""


def _weight(shard: int, native: str) -> int:
    digest = hashlib.blake2b(native.encode(), digest_size=8, key=_HASH_KEY, salt=shard.to_bytes(16, "big"))
    return int.from_bytes(digest.digest(), "big")


def shard_of(native: str, n: int) -> int:
    """The 1-based shard (of ``n``) that owns ``native``. Stable across processes and machines."""
    if n < 1:
        raise ValueError(f"shard count must be positive, got {n}")
    if n == 1:
        return 1
    # Ties need two equal 64-bit digests; max() then keeps the lower shard, still deterministic.
    return max(range(1, n + 1), key=lambda i: _weight(i, native))


def select_shard(contracts: ContractSet, k: int, n: int) -> ContractSet:
    """The contracts of shard ``k`` of ``n``, in the set's order.

    The result may be empty when ``n`` exceeds the number of contracts; the caller decides
    whether a shard with nothing to do is an error. ``skipped_unsafe`` is kept so each shard
    still reports what discovery refused.
    """
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: K must be between 1 and N")
    kept = tuple(c for c in contracts if shard_of(c.native, n) == k)
    return ContractSet(contracts.venue, kept, contracts.skipped_unsafe)


def shard_label(k: int, n: int) -> str:
    """``shard-2-of-4``: the file-name prefix that keeps shards' Parquet files apart."""
    return f"shard-{k}-of-{n}"
