#!/usr/bin/env bash
# Out-of-core at scale (not run in CI): generate a dataset larger than this machine's RAM,
# run stats and a fit + transform to f16 over it with a 256 MiB budget, and check that
# nothing was lost or wrong against an independent streaming reader (numpy memmap).
#
#   scripts/scale.sh [DIR] [SIZE_GIB]      (defaults: /tmp, 32)
#
# Prints one table row per step: wall seconds, GB/s of input, peak RssAnon.
set -euo pipefail
DIR=${1:-/tmp}/tilestream-scale
GIB=${2:-32}
cd "$(dirname "$0")/.."
cargo build --release --quiet
TS=target/release/tilestream
mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT
ROWS=$(( GIB * 1024 * 1024 * 1024 / 33 ))   # 8 f32 columns + a u8 key per row
DATA=$DIR/big.safetensors
OUT=$DIR/out.safetensors

# Runs a command, sampling its RssAnon every 10 ms; prints "seconds peak_kB".
measure() {
  local start end peak=0 rss
  start=$(date +%s.%N)
  "$@" > "$DIR/last.out" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.01
  done
  wait "$pid"
  end=$(date +%s.%N)
  echo "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}') $peak"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; dataset: $ROWS rows ($GIB GiB)"
read -r s peak < <(measure $TS gen "$DATA" --rows "$ROWS" --quiet)
BYTES=$(stat -c %s "$DATA")
printf "%-34s %8.1f s %7.2f GB/s  peak RssAnon %6d MiB\n" "gen" "$s" "$(awk -v b="$BYTES" -v s="$s" 'BEGIN {print b / s / 1e9}')" $((peak / 1024))
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
read -r s peak < <(measure $TS --memory-budget 256MiB stats "$DATA" --json)
cp "$DIR/last.out" "$DIR/stats.json"
printf "%-34s %8.1f s %7.2f GB/s  peak RssAnon %6d MiB\n" "stats (all columns)" "$s" "$(awk -v b="$BYTES" -v s="$s" 'BEGIN {print b / s / 1e9}')" $((peak / 1024))
read -r s peak < <(measure $TS --memory-budget 256MiB transform "$DATA" -o "$OUT" --standardize all --cast f16 --json)
cp "$DIR/last.out" "$DIR/transform.json"
printf "%-34s %8.1f s %7.2f GB/s  peak RssAnon %6d MiB\n" "fit + standardize -> f16, write" "$s" "$(awk -v b="$BYTES" -v s="$s" 'BEGIN {print 2 * b / s / 1e9}')" $((peak / 1024))

# Independent checks, streaming through numpy memmaps in chunks.
python3 - "$DATA" "$OUT" "$DIR/stats.json" "$DIR/transform.json" "$ROWS" <<'PY'
import json, struct, sys
import numpy as np
data, out, stats, transform, rows = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4])), int(sys.argv[5])
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: v for k, v in h.items() if k != "__metadata__"}, 8 + n
def column(path, name):
    t, base = tensors(path)
    d = t[name]
    dt = {"F32": np.float32, "F16": np.float16, "U8": np.uint8}[d["dtype"]]
    return np.memmap(path, dtype=dt, mode="r", offset=base + d["data_offsets"][0], shape=tuple(d["shape"]))
assert stats["rows"] == rows, (stats["rows"], rows)
assert transform["rows_written"] == rows, transform["rows_written"]
t, _ = tensors(out)
assert all(v["shape"] == [rows] for v in t.values()), "output shapes"
chunk = 1 << 24
f1, s, c = column(data, "f1"), 0.0, 0
for i in range(0, rows, chunk):
    x = f1[i:i + chunk].astype(np.float64)
    s += float(np.nansum(x)); c += int(np.count_nonzero(~np.isnan(x)))
got = stats["columns"]["f1"]
assert got["count"] == c, (got["count"], c)
assert abs(got["sum"] - s) <= 1e-9 * abs(s) + 1e-6, (got["sum"], s)
kin, kout, a, b = column(data, "key"), column(out, "key"), 0, 0
for i in range(0, rows, chunk):
    a += int(kin[i:i + chunk].sum(dtype=np.uint64)); b += int(kout[i:i + chunk].sum(dtype=np.uint64))
assert a == b, ("key checksum", a, b)
print(f"checks: rows {rows} in stats and output; f1 count {c} and sum {s:.6e} match numpy; key checksum {a} matches")
PY
