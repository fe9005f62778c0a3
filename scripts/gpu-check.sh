#!/usr/bin/env bash
# One prepared run on a lent NVIDIA machine (after scripts/gpu-prepare.sh here): the GPU
# tests (CUDA, and wgpu on the real GPU's Vulkan driver), the cross-device equivalence
# suite, then the benchmarks on CUDA, wgpu and the CPU and the PyTorch peer, all over one
# generated dataset of several GB. A short table lands in $OUT/gpu-table.txt and the logs
# beside it. Every step has its own time limit so that the table comes back even when one
# step fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR=/tmp REQUIRE_GPU_ADAPTER=1 REQUIRE_CUDA=1 TILESTREAM_CACHE=/tmp/tilestream-cache
# NVRTC: the machine's own (a CUDA install, or the one PyTorch/CuPy brought from pip).
if [ -z "${TILESTREAM_NVRTC:-}" ]; then
  nv=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[23] 2>/dev/null | head -1)
  [ -n "$nv" ] || nv=$(find / -xdev \( -name 'libnvrtc.so.13' -o -name 'libnvrtc.so.12' \) -path '*nvidia*' 2>/dev/null | sort | head -1)
  [ -n "$nv" ] && export TILESTREAM_NVRTC=$nv
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; echo "TILESTREAM_NVRTC=${TILESTREAM_NVRTC:-}"; } > "$OUT/env.txt" 2>&1
timeout 60 .gpu/tilestream devices > "$OUT/devices.txt" 2>&1
cat "$OUT/env.txt" "$OUT/devices.txt"
# The wgpu adapter auto would pick (a real GPU), as wgpu:N.
dev=$(grep -o '^wgpu:[0-9]*' "$OUT/devices.txt" | while read -r d; do grep -q "^$d .*auto may pick" "$OUT/devices.txt" && echo "$d" && break; done)
dev=${dev:-wgpu}
echo "wgpu device: $dev" | tee -a "$OUT/env.txt"
( export TILESTREAM_AUTO_GPU=$dev; timeout 120 .gpu/gpu --test-threads 4 ) > "$OUT/test-gpu.log" 2>&1; t1=$?
( timeout 120 .gpu/equivalence --test-threads 8 ) > "$OUT/test-equivalence.log" 2>&1; t2=$?
rows=${BENCH_ROWS:-100000000}
timeout 40 .gpu/tilestream gen --quiet --force --rows "$rows" /tmp/bench.safetensors > "$OUT/gen.txt" 2>&1
( timeout 90 .gpu/tilestream bench --quiet --device cuda --memory-budget 1GiB --data /tmp/bench.safetensors ) > "$OUT/bench-cuda.txt" 2>&1; t3=$?
( timeout 60 python3 .gpu/gpu-peer.py /tmp/bench.safetensors ) > "$OUT/bench-peer.txt" 2>&1; t4=$?
( timeout 50 .gpu/tilestream bench --quiet --device "$dev" --memory-budget 1GiB --data /tmp/bench.safetensors ) > "$OUT/bench-wgpu.txt" 2>&1; t5=$?
( timeout 30 .gpu/tilestream bench --quiet --device cpu --data /tmp/bench.safetensors ) > "$OUT/bench-cpu.txt" 2>&1; t6=$?
{
  echo "tilestream on $(sed -n 3p "$OUT/env.txt"), $(date -u +%F), $rows rows x 8 f32 + u8 key"
  echo "tests/gpu.rs: exit $t1; $(grep -h 'test result' "$OUT/test-gpu.log" | tail -1)"
  grep -h -A2 'panicked' "$OUT/test-gpu.log" | head -n 12
  echo "tests/equivalence.rs: exit $t2; $(grep -h 'test result' "$OUT/test-equivalence.log" | tail -1)"
  grep -h -A2 'panicked' "$OUT/test-equivalence.log" | head -n 12
  for b in cuda:$t3 peer:$t4 wgpu:$t5 cpu:$t6; do
    echo "bench ${b%%:*} (exit ${b##*:}):"; grep -E '^(peer|query|stats|histogram|group|fit|filter|skipped)' "$OUT/bench-${b%%:*}.txt"
    [ "${b##*:}" = 0 ] || tail -n 3 "$OUT/bench-${b%%:*}.txt"
  done
} > "$OUT/gpu-table.txt" 2>&1
cat "$OUT/gpu-table.txt"
