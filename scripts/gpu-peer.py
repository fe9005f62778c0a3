#!/usr/bin/env python3
"""The peer of `tilestream bench` on an NVIDIA GPU: the same queries through PyTorch, from
the same memory-mapped safetensors file (made by `tilestream gen`), written as a fair one:
chunks copied from the memmap into pinned host buffers, non-blocking copies on two CUDA
streams, f64 accumulation on the device.

  python3 scripts/gpu-peer.py DATA.safetensors [--chunk-mib 64] [--json]

Without PyTorch or a GPU it runs the same chunked code with numpy on the CPU (to check the
logic here; the times then mean nothing)."""
import argparse
import json
import struct
import sys
import time

import numpy as np


def columns(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    base = 8 + n
    cols = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "U8": np.uint8}.get(t["dtype"])
        if dtype is None:
            continue
        a, b = t["data_offsets"]
        cols[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + a, shape=((b - a) // np.dtype(dtype).itemsize,))
    return cols


class Numpy:
    """The CPU stand-in: the same calls as Torch below."""

    name = "numpy (CPU stand-in)"

    def __init__(self, chunk_rows):
        self.chunk_rows = chunk_rows

    def chunks(self, arrays):
        n = arrays[0].shape[0]
        for s in range(0, n, self.chunk_rows):
            yield [np.asarray(a[s : s + self.chunk_rows]) for a in arrays]

    def f64(self, x):
        return x.astype(np.float64)

    def where(self, c, a, b):
        return np.where(c, a, b)

    def isnan(self, x):
        return np.isnan(x)

    def sum(self, x):
        return x.sum(dtype=np.float64)

    def minimum(self, x, ok):
        return np.where(ok, x, np.inf).min() if x.size else np.inf

    def maximum(self, x, ok):
        return np.where(ok, x, -np.inf).max() if x.size else -np.inf

    def bincount(self, idx, weights, length):
        return np.bincount(idx.astype(np.int64), weights=weights, minlength=length).astype(np.float64)

    def scalar(self, v):
        return float(v)

    def sync(self):
        pass


class Torch:
    """Two pinned buffers per input array and two streams: while one chunk's copy and
    kernels run on one stream, the host fills the other buffer from the memmap."""

    def __init__(self, chunk_rows):
        import torch

        self.t = torch
        self.dev = torch.device("cuda")
        self.name = "PyTorch %s on %s" % (torch.__version__, torch.cuda.get_device_name(0))
        self.chunk_rows = chunk_rows
        self.streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        self.pinned = {}
        self.done = [None, None]

    def chunks(self, arrays):
        t = self.t
        n = arrays[0].shape[0]
        k = 0
        for s in range(0, n, self.chunk_rows):
            rows = min(self.chunk_rows, n - s)
            slot = k % 2
            k += 1
            if self.done[slot] is not None:
                self.done[slot].synchronize()  # the pinned buffers of this slot are free again
            outs = []
            with t.cuda.stream(self.streams[slot]):
                for j, a in enumerate(arrays):
                    key = (slot, j, a.dtype.str)
                    if key not in self.pinned:
                        self.pinned[key] = t.empty(self.chunk_rows, dtype=t.from_numpy(a[:1].copy()).dtype, pin_memory=True)
                    buf = self.pinned[key][:rows]
                    buf.numpy()[:] = a[s : s + rows]
                    outs.append(buf.to(self.dev, non_blocking=True))
                yield outs
                ev = t.cuda.Event()
                ev.record(self.streams[slot])
                self.done[slot] = ev

    def f64(self, x):
        return x.double()

    def where(self, c, a, b):
        return self.t.where(c, a, b)

    def isnan(self, x):
        return self.t.isnan(x)

    def sum(self, x):
        return x.sum(dtype=self.t.float64)

    # Masked with where, not indexed: boolean indexing would wait for the device.
    def minimum(self, x, ok):
        return self.t.where(ok, x, float("inf")).min()

    def maximum(self, x, ok):
        return self.t.where(ok, x, float("-inf")).max()

    def bincount(self, idx, weights, length):
        return self.t.bincount(idx.long(), weights=weights, minlength=length).double()

    def scalar(self, v):
        return float(v.item()) if hasattr(v, "item") else float(v)

    def sync(self):
        self.t.cuda.synchronize()


def stats(xp, cols, names, where=None):
    """count, sum, mean, min, max, var of each column (rows where `where` holds), shifted
    by each column's first value."""
    arrays = [cols[n] for n in names] + ([cols["key"]] if where else [])
    pivots = [float(cols[n][0]) if np.isfinite(cols[n][0]) else 0.0 for n in names]
    parts = []
    for chunk in xp.chunks(arrays):
        sel = where(chunk) if where else None
        out = []
        for j, x in enumerate(chunk[: len(names)]):
            ok = ~xp.isnan(x)
            if sel is not None:
                ok = ok & sel
            d = xp.where(ok, xp.f64(x) - pivots[j], 0.0)
            out.append((xp.sum(ok), xp.sum(d), xp.sum(d * d), xp.minimum(x, ok), xp.maximum(x, ok)))
        parts.append(out)
    xp.sync()
    res = {}
    for j, n in enumerate(names):
        c = sum(xp.scalar(p[j][0]) for p in parts)
        s = sum(xp.scalar(p[j][1]) for p in parts)
        s2 = sum(xp.scalar(p[j][2]) for p in parts)
        mean = pivots[j] + s / c if c else float("nan")
        var = s2 / c - (s / c) ** 2 if c else float("nan")
        res[n] = {"count": c, "sum": c * pivots[j] + s, "mean": mean, "var": var,
                  "min": min(xp.scalar(p[j][3]) for p in parts), "max": max(xp.scalar(p[j][4]) for p in parts)}
    return res


def group_by(xp, cols, names):
    """Per key (u8): count, sum and sum of squares of each column (one bincount each)."""
    parts = []
    for chunk in xp.chunks([cols[n] for n in names] + [cols["key"]]):
        key = chunk[-1]
        out = []
        for x in chunk[:-1]:
            ok = ~xp.isnan(x)
            xd = xp.where(ok, xp.f64(x), 0.0)
            out.append((xp.bincount(key, xp.f64(ok), 256), xp.bincount(key, xd, 256), xp.bincount(key, xd * xd, 256)))
        parts.append(out)
    xp.sync()
    return {n: float(sum(xp.scalar(p[j][0].sum()) for p in parts)) for j, n in enumerate(names)}


def histogram(xp, cols, name, bins, lo, hi):
    parts = []
    for (x,) in xp.chunks([cols[name]]):
        xd = xp.f64(x)
        ok = (xd >= lo) & (xd <= hi)
        b = xp.where(ok, (xd - lo) * (bins / (hi - lo)), 0.0)
        idx = b.long() if hasattr(b, "long") else b.astype(np.int64)
        idx = xp.where(idx >= bins, bins - 1, idx)
        parts.append(xp.bincount(idx, xp.f64(ok), bins))
    xp.sync()
    return sum(float(xp.scalar(p.sum())) for p in parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cols = columns(a.data)
    names = sorted((n for n in cols if n.startswith("f")), key=lambda n: int(n[1:]))
    chunk_rows = (max(1, a.chunk_mib) << 20) // 4
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("no CUDA device")
        xp = Torch(chunk_rows)
    except ImportError as e:
        print("peer: %s; using numpy on the CPU" % e, file=sys.stderr)
        xp = Numpy(chunk_rows)
    nbytes = lambda ns: sum(cols[n].nbytes for n in ns)
    queries = [
        ("stats, all float columns", lambda: stats(xp, cols, names), nbytes(names)),
        ("stats where f0>0 && key<32", lambda: stats(xp, cols, names, where=lambda c: (c[0] > 0) & (c[-1] < 32)), nbytes(names + ["key"])),
        ("group-by key (64 keys), all stats", lambda: group_by(xp, cols, names), nbytes(names + ["key"])),
        ("histogram f1, 256 bins", lambda: histogram(xp, cols, "f1", 256, 0.0, 1.0), nbytes(["f1"])),
    ]
    rows = []
    for q, f, b in queries:
        f()  # warm-up: page cache, CUDA context, kernels
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            result = f()
            best = min(best, time.perf_counter() - t)
        rows.append({"query": q, "seconds": best, "gb_per_s": b / best / 1e9, "check": result if q.startswith("stats") else None})
    if a.json:
        print(json.dumps({"peer": xp.name, "queries": rows}))
    else:
        print("peer: %s" % xp.name)
        for r in rows:
            print("%-40s %8.3f s %8.2f GB/s" % (r["query"], r["seconds"], r["gb_per_s"]))


if __name__ == "__main__":
    main()
