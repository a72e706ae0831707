"""Backoff pacing (cap, full-jitter bounds, reset) and the retriable/fatal classifier."""

from __future__ import annotations

import random
import ssl
import statistics

import aiohttp
import pytest
import websockets.datastructures
import websockets.exceptions
import websockets.http11
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ingestd.backoff import Backoff, classify
from ingestd.config import StreamSettings
from ingestd.errors import ParseError, PhaseTimeoutError, TransportError


def test_ceiling_grows_by_factor_and_is_capped() -> None:
    b = Backoff(0.5, 4.0, 2.0, rng=random.Random(1))
    ceilings = []
    for _ in range(7):
        ceilings.append(b.ceiling())
        b.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert b.attempts == 7


def test_delays_stay_within_full_jitter_bounds() -> None:
    b = Backoff(0.25, 3.0, 3.0, rng=random.Random(7))
    for _ in range(2000):
        ceiling = b.ceiling()
        d = b.next_delay()
        assert 0.0 <= d <= ceiling <= 3.0
        if b.attempts > 50:
            b.reset()


def test_full_jitter_spreads_over_the_whole_window() -> None:
    rng = random.Random(42)
    b = Backoff(1.0, 1.0, 2.0, rng=rng)
    draws = [b.next_delay() for _ in range(5000)]
    # Full jitter: uniform on [0, ceiling] -> mean about half the ceiling, both ends reached.
    assert min(draws) < 0.01
    assert max(draws) > 0.99
    assert statistics.fmean(draws) == pytest.approx(0.5, abs=0.03)


def test_reset_starts_over() -> None:
    b = Backoff(0.1, 10.0, 2.0, rng=random.Random(3))
    for _ in range(5):
        b.next_delay()
    assert b.ceiling() == pytest.approx(3.2)
    b.reset()
    assert b.attempts == 0
    assert b.ceiling() == 0.1
    assert 0.0 <= b.next_delay() <= 0.1


def test_is_an_iterator() -> None:
    b = Backoff(1.0, 2.0, 2.0, rng=random.Random(5))
    it = iter(b)
    assert it is b
    delays = [next(it) for _ in range(3)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert b.attempts == 3


def test_long_outage_does_not_overflow() -> None:
    b = Backoff(0.5, 30.0, 10.0, rng=random.Random(0))
    for _ in range(5000):
        b.next_delay()
    assert b.ceiling() == 30.0


def test_from_settings() -> None:
    s = StreamSettings(backoff_initial_s=0.2, backoff_max_s=7.0, backoff_factor=1.5)
    b = Backoff.from_settings(s)
    assert (b.initial_s, b.max_s, b.factor) == (0.2, 7.0, 1.5)
    assert b.ceiling() == 0.2


def test_max_below_initial_caps_the_first_delay() -> None:
    b = Backoff(5.0, 1.0, 2.0, rng=random.Random(0))
    assert b.ceiling() == 1.0
    assert b.next_delay() <= 1.0


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (1, 0, 2), (1, 2, 0.5)])
def test_rejects_bad_parameters(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, factor)


def _handshake_error(status: int) -> aiohttp.WSServerHandshakeError:
    url = URL("wss://fstream.binance.com/public/stream")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.WSServerHandshakeError(info, (), status=status, message="handshake")


def _websockets_invalid_status(status: int) -> websockets.exceptions.InvalidStatus:
    response = websockets.http11.Response(status, "x", websockets.datastructures.Headers())
    return websockets.exceptions.InvalidStatus(response)


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (ConnectionResetError(), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (EOFError(), True),
        (OSError("network unreachable"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("truncated"), True),
        (aiohttp.WebSocketError(1009, "message too big"), True),
        (_handshake_error(503), True),
        (_handshake_error(502), True),
        (_handshake_error(429), True),
        (_handshake_error(418), True),
        (_handshake_error(404), False),
        (_handshake_error(400), False),
        (_handshake_error(200), False),
        (_websockets_invalid_status(500), True),
        (_websockets_invalid_status(401), False),
        # Retriable by decision (see classify): the fix happens outside the process.
        (ssl.SSLCertVerificationError("certificate verify failed"), True),
        (ssl.SSLError("wrong version number"), True),
        (aiohttp.InvalidURL("nope"), False),
        (TransportError("dropped"), True),
        (TransportError("wrong path", retriable=False), False),
        (PhaseTimeoutError("connect", 10), True),
        (ParseError("bad frame"), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
    ],
)
def test_classify(exc: BaseException, retriable: bool) -> None:
    assert classify(exc) is retriable
