#!/usr/bin/env bash
# One prepared run on a lent NVIDIA machine (after scripts/gpu-prepare.sh here): the wgpu
# tests on the real GPU's Vulkan driver, then the benchmarks; a short table lands in
# $OUT/gpu-table.txt and the logs beside it. Every step has its own time limit so that the
# table comes back even when one step fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR=/tmp REQUIRE_GPU_ADAPTER=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } > "$OUT/env.txt" 2>&1
timeout 30 .gpu/tilestream devices > "$OUT/devices.txt" 2>&1
cat "$OUT/devices.txt"
# The adapter auto picks (a real GPU), as wgpu:N.
dev=$(grep -o '^wgpu:[0-9]*' "$OUT/devices.txt" | while read -r d; do grep -q "^$d .*auto may pick" "$OUT/devices.txt" && echo "$d" && break; done)
dev=${dev:-wgpu}
echo "device: $dev" | tee -a "$OUT/env.txt"
( export TILESTREAM_AUTO_GPU=$dev; timeout 240 .gpu/wgpu --test-threads 2 ) > "$OUT/test-wgpu.log" 2>&1; t1=$?
( timeout 300 .gpu/equivalence --test-threads 4 ) > "$OUT/test-equivalence.log" 2>&1; t2=$?
( timeout 240 .gpu/tilestream bench --device "$dev" --rows "${BENCH_ROWS:-100000000}" --dir /tmp ) > "$OUT/bench-gpu.txt" 2>&1; t3=$?
( timeout 120 .gpu/tilestream bench --device cpu --rows "${BENCH_ROWS:-100000000}" --dir /tmp ) > "$OUT/bench-cpu.txt" 2>&1; t4=$?
{
  echo "tilestream on $(tail -n +2 "$OUT/env.txt" | head -1), $(date -u +%F)"
  echo "tests/wgpu.rs: exit $t1; $(grep -h 'test result' "$OUT/test-wgpu.log" | tail -1)"
  echo "tests/equivalence.rs: exit $t2; $(grep -h 'test result' "$OUT/test-equivalence.log" | tail -1)"
  echo "bench $dev (exit $t3):"; grep -E '^(query|stats|histogram|group|fit|filter|skipped)' "$OUT/bench-gpu.txt"
  echo "bench cpu (exit $t4):"; grep -E '^(query|stats|histogram|group|fit|filter)' "$OUT/bench-cpu.txt"
} > "$OUT/gpu-table.txt" 2>&1
cat "$OUT/gpu-table.txt"
