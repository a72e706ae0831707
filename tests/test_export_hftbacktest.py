"""``ingestd export hftbacktest``: a live ``--raw`` dump of the sim → collector files whose frames
are the capture's bytes, read back by the same hftbacktest-format reader the sim uses."""

from __future__ import annotations

import asyncio
import gzip
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from ingestd.app import Daemon
from ingestd.cli import main
from ingestd.sim import SimVenue
from ingestd.sim.captures import load_capture
from tests.conftest import BUNDLED_CAPTURE
from tests.e2e import capture_lines, run_until, settings_for


def _per_stream(path: Path) -> tuple[dict[str, list[bytes]], list[int]]:
    """Frames per stream (exact bytes) and the snapshot ids of an hftbacktest-format file."""
    frames: dict[str, list[bytes]] = defaultdict(list)
    snaps: list[int] = []
    with gzip.open(path, "rb") as fh:
        for line in fh:
            _, _, body = line.rstrip(b"\n").partition(b" ")
            obj = orjson.loads(body)
            if "stream" in obj:
                frames[obj["stream"]].append(body)
            else:
                snaps.append(obj["lastUpdateId"])
    return frames, snaps


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hft") / "dump"
    n_frames = sum(1 for _ in capture_lines(BUNDLED_CAPTURE))

    async def run() -> None:
        async with SimVenue([BUNDLED_CAPTURE], speed=0) as sim:
            settings = settings_for(
                sim.rest_url, sim.ws_url, root.parent / "data", symbols="BTCUSDT",
                channels="trade,book_ticker,depth_diff", storage={"enabled": False},
                json_dump={"dir": str(root), "raw": True},
            )  # fmt: skip
            daemon = Daemon(settings)
            # Each frame is published twice: its raw bytes, then its record.
            assert await run_until(daemon, lambda: daemon.bus.published >= 2 * n_frames, timeout=120) == 0

    asyncio.run(run())
    return root


def test_collector_files_hold_the_frames_byte_for_byte(dump: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["export", "hftbacktest", "--raw", str(dump), "--out", str(out)]) == 0
    (produced,) = sorted((out / "binance-usdm").glob("btcusdt_*.gz"))
    got, snaps = _per_stream(produced)
    want, want_snaps = _per_stream(BUNDLED_CAPTURE)
    assert got.keys() == want.keys()
    for stream, frames in want.items():
        assert got[stream] == frames, stream  # every frame, in order, untouched
    assert snaps == want_snaps
    cap = load_capture(produced)  # the hftbacktest reader takes the file as it is
    assert cap.stream_counts() == {s: len(f) for s, f in want.items()}
    assert not list(out.rglob(".*.tmp"))

    # Exporting again replaces the files: the same bytes once, not twice.
    before = produced.read_bytes()
    assert main(["export", "hftbacktest", "--raw", str(dump), "--out", str(out)]) == 0
    assert gzip.decompress(produced.read_bytes()) == gzip.decompress(before)


def test_bad_raw_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "hftbacktest", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a directory")
    (tmp_path / "empty").mkdir()
    assert (
        main(["export", "hftbacktest", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "holds no raw dump" in capsys.readouterr().err
