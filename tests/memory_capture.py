"""A generated many-symbol USDⓈ-M depth capture for the sim (hftbacktest line format).

``X000USDT`` … ``X199USDT``: depth diffs round-robin over the symbols, chained by ``pu`` on one
global id sequence (futures ids are global), each setting ``levels`` rows a side inside fixed
bands (bids 100.00-100.99, asks 102.00-102.99: the book never crosses), and a REST depth body per
symbol after its 3rd diff and then every 50 of its diffs, so that the sim (which answers
``/depth`` with the latest recorded snapshot at the replay position) always has a recent one. The
shapes are the hftbacktest USDⓈ-M ``depthUpdate`` and fapi depth body (tests/data/PROVENANCE.md);
only the values are made up.
"""

from __future__ import annotations

import random
from pathlib import Path


def write_capture(path: Path, *, symbols: int, diffs_per_symbol: int, levels: int, seed: int = 11) -> Path:
    """Write the capture to ``path`` (plain text) and return it."""
    rng = random.Random(seed)
    natives = [f"X{i:03d}USDT" for i in range(symbols)]
    last_u = dict.fromkeys(natives, 0)
    gid = 7_000_000_000
    t_ms = 1_723_161_600_000
    lines: list[str] = []
    qty = [f"{rng.randrange(1, 5000) / 1000:.3f}" for _ in range(64)]
    for n in range(diffs_per_symbol):
        for native in natives:
            t_ms += 1
            first = gid + 1
            gid += rng.randint(2, 9)
            prev, last_u[native] = last_u[native] or first - 1, gid
            b = ",".join(
                f'["100.{rng.randrange(100):02d}","{qty[rng.randrange(64)]}"]' for _ in range(levels)
            )
            a = ",".join(
                f'["102.{rng.randrange(100):02d}","{qty[rng.randrange(64)]}"]' for _ in range(levels)
            )
            recv = t_ms * 1_000_000 + 2_000_000
            lines.append(
                f'{recv} {{"stream":"{native.lower()}@depth@100ms","data":{{"e":"depthUpdate","E":{t_ms},'
                f'"T":{t_ms - 1},"s":"{native}","U":{first},"u":{gid},"pu":{prev},"b":[{b}],"a":[{a}]}}}}'
            )
            if n == 2 or (n > 2 and n % 50 == 0):
                bids = ",".join(f'["100.{p:02d}","1.000"]' for p in range(99, 49, -1))
                asks = ",".join(f'["102.{p:02d}","1.000"]' for p in range(50))
                lines.append(
                    f'{recv + 1000} {{"lastUpdateId":{gid},"E":{t_ms},"T":{t_ms - 1},"symbol":"{native}",'
                    f'"bids":[{bids}],"asks":[{asks}]}}'
                )
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path
