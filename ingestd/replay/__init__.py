"""Replay stage: stored Parquet back as live records, with books and hook context as of each."""

from ingestd.replay.api import frame, records
from ingestd.replay.engine import Replay, parse_time
from ingestd.replay.hooks import HookTarget, run_hooks

__all__ = ["HookTarget", "Replay", "frame", "parse_time", "records", "run_hooks"]
