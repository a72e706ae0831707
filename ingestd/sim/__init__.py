"""sim stage: a Binance-compatible local venue replaying recorded captures, with fault injection."""

from ingestd.sim.captures import Capture, CaptureError, Snapshot, StreamInfo, Timeline, load_capture
from ingestd.sim.faults import ABORT, Faults, Where
from ingestd.sim.venue import BUNDLED_CAPTURE, ConnectionStats, SimStats, SimVenue

__all__ = [
    "ABORT",
    "BUNDLED_CAPTURE",
    "Capture",
    "CaptureError",
    "ConnectionStats",
    "Faults",
    "SimStats",
    "SimVenue",
    "Snapshot",
    "StreamInfo",
    "Timeline",
    "Where",
    "load_capture",
]
