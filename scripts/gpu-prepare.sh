#!/usr/bin/env bash
# Prepares a run on a lent GPU machine (see scripts/gpu-check.sh), here, where Rust is:
# builds the binary and the GPU test binaries into .gpu/ (with scripts/gpu-peer.py, the
# PyTorch peer of the benchmark) and downloads the Vulkan loader
# into .gl/ (the GPU machine has the NVIDIA driver but may lack the loader, and has no Rust
# and no network). Both folders are kept out of git; name them in the run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu .gl /tmp/amd64/partial
cargo build --release
cp target/release/tilestream .gpu/
# Test binaries: the GPU suite (wgpu and CUDA) and the cross-device equivalence suite.
# (Cargo also lists the CLI binary it builds for the tests, in no fixed order: pick the
# test target by kind and name.)
for t in gpu equivalence; do
  exe=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null \
        | T="$t" python3 -c 'import json,os,sys; print(*[m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["kind"] == ["test"] and m["target"]["name"] == os.environ["T"]])')
  [ -n "$exe" ] || { echo "no test binary for tests/$t.rs" >&2; exit 1; }
  cp "$exe" ".gpu/$t"
  # A test binary lists its tests; the CLI would print its usage instead.
  # (grep -c reads all of the list: grep -q could stop early, and the binary fail on the
  # closed pipe under pipefail.)
  [ "$(".gpu/$t" --list | grep -c ': test$')" -gt 0 ] || { echo ".gpu/$t is not the tests/$t.rs binary" >&2; exit 1; }
done
strip .gpu/* 2>/dev/null || true
cp scripts/gpu-peer.py .gpu/
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1)
fi
du -sh .gpu .gl
echo 'now: run(command="bash scripts/gpu-check.sh", carry=[".gpu", ".gl"], timeout_s=590)'
