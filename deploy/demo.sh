#!/usr/bin/env bash
# Offline demo: replay a real Binance USDⓈ-M capture (hftbacktest, 2024-08-08, BTCUSDT) through
# `ingestd sim` on 127.0.0.1 and ingest it with storage on, then summarise the Parquet it wrote.
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
    --channels trade,book_ticker,depth_diff --data-dir "$OUT" --duration "${DURATION:-15}" --log-format text
"$BIN/python" - "$OUT" <<'PY'
import sys
from ingestd.consumers.schema import open_dataset
root = sys.argv[1]
t = open_dataset(root).to_table(columns=["channel"])
counts = t.group_by("channel").aggregate([("channel", "count")]).to_pylist()
print(f"Parquet under {root}/ (hive: venue=/channel=/symbol=/date=):")
for row in sorted(counts, key=lambda r: r["channel"]):
    print(f"  {row['channel']:<16} {row['channel_count']:>8} rows")
PY
