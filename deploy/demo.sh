#!/usr/bin/env bash
# Offline demo: replay a real Binance USDⓈ-M capture (hftbacktest, 2024-08-08, BTCUSDT) through
# `ingestd sim` on 127.0.0.1 and ingest it with storage on, then summarise the Parquet it wrote
# and check it against the capture: every depth diff, bookTicker and trade stored (exit 1 if not).
# BIN (default .venv/bin) picks the installation, OUT the Parquet root, DURATION the run time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-demo-data}
rm -rf "$OUT"
fifo=$(mktemp -u); mkfifo "$fifo"
"$BIN/ingestd" sim --speed 0 >"$fifo" &
SIM=$!
trap 'kill $SIM 2>/dev/null; rm -f "$fifo"' EXIT
read -r line <"$fifo"
echo "sim ready: $line"
REST=$(echo "$line" | sed -E 's/.*rest=([^ ]+).*/\1/')
WS=$(echo "$line" | sed -E 's/.*ws=([^ ]+).*/\1/')
"$BIN/ingestd" --rest-url "$REST" --ws-url "$WS" --symbols BTCUSDT \
    --data-dir "$OUT" --duration "${DURATION:-15}" --log-format text \
    --health-port 0
"$BIN/python" - "$OUT" <<'PY'
import sys

from ingestd.consumers.schema import open_dataset
from ingestd.sim import BUNDLED_CAPTURE, load_capture

root = sys.argv[1]
t = open_dataset(root).to_table(columns=["channel"])
counts = {r["channel"]: r["channel_count"] for r in t.group_by("channel").aggregate([("channel", "count")]).to_pylist()}
print(f"Parquet under {root}/ (hive: venue=/channel=/symbol=/date=):")
for channel in sorted(counts):
    print(f"  {channel:<16} {counts[channel]:>8} rows")

# The capture is the ground truth: each stored channel holds every frame of its stream.
recorded = {name.partition("@")[2].partition("@")[0]: n for name, n in load_capture(BUNDLED_CAPTURE).stream_counts().items()}
checks = {c: (counts.get(c, 0), recorded[k]) for c, k in (("depth_diff", "depth"), ("book_ticker", "bookTicker"))}
if "trade" in counts or "agg_trade" not in counts:
    checks["trade"] = (counts.get("trade", 0), recorded["trade"])
if "agg_trade" in counts:  # aggregates of the recorded trades: every trade covered exactly once
    aggs = open_dataset(root, channel="agg_trade").to_table(columns=["first_trade_id", "last_trade_id"]).to_pydict()
    ranges = sorted(zip(aggs["first_trade_id"], aggs["last_trade_id"]))
    contiguous = all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
    covered = sum(last - first + 1 for first, last in ranges) if contiguous else -1
    checks["trades in agg_trade"] = (covered, recorded["trade"])
missing = {c: got_want for c, got_want in checks.items() if got_want[0] != got_want[1]}
if missing:
    print("incomplete: " + ", ".join(f"{c} {g} of {n}" for c, (g, n) in missing.items()), file=sys.stderr)
    sys.exit(1)
print("complete: " + ", ".join(f"{c} {n}" for c, (_, n) in checks.items()) + ": all of the capture stored")
PY
