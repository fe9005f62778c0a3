#!/usr/bin/env python3
"""Writes the bad-input corpus used by tests/bad_input.rs, and its manifest.

Run once from anywhere: `python3 tests/corpus/make_corpus.py`. Standard library only (no
numpy), deterministic: running it again rewrites the same bytes. The files are committed.

manifest.json is a list of cases. Each case runs `tilestream info FILES... --json` and
`tilestream stats FILES... --json` (with `args` added, e.g. `--raw f32:4`) and expects:

- "reject": exit code 2 and one stderr line `tilestream: ...` that names `error_file`
  (default: the first file) and contains `error`;
- "accept": exit code 0, `rows`, the column names of `info` (`columns`, in order), the
  column names of `stats` (`stats_columns`, default `columns`), and for some columns some
  expected statistics. An expected JSON integer must come back as a JSON integer and an
  expected float as a JSON float; "inf", "-inf", "nan" and null must match exactly; `sum`,
  `mean`, `var` and `std` are compared to 1e-9 relative, everything else exactly.
"""

import json
import math
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = []


def path(name):
    p = os.path.join(HERE, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def write(name, data):
    with open(path(name), "wb") as f:
        f.write(data)


def reject(name, files, error, args=None, error_file=None, note=""):
    CASES.append(
        {
            "name": name,
            "files": files,
            "args": args or [],
            "expect": "reject",
            "error": error,
            "error_file": error_file or files[0],
            "note": note,
        }
    )


def accept(name, files, rows, columns, stats=None, stats_columns=None, args=None, note=""):
    case = {"name": name, "files": files, "args": args or [], "expect": "accept", "rows": rows, "columns": columns}
    if stats_columns is not None:
        case["stats_columns"] = stats_columns
    case["stats"] = stats or {}
    case["note"] = note
    CASES.append(case)


# ---------------------------------------------------------------- value helpers

def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f16(x):
    return struct.unpack("<e", struct.pack("<e", x))[0]


def bf16_bits(x):
    """Round-to-nearest-even bf16 bits of a float (no NaN handling needed here)."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    rounding = 0x7FFF + ((bits >> 16) & 1)
    return ((bits + rounding) >> 16) & 0xFFFF


def bf16(x):
    return struct.unpack("<f", struct.pack("<I", bf16_bits(x) << 16))[0]


def num(v):
    """A statistic as the CLI prints it: float, or the strings for non-finite values."""
    if v is None:
        return None
    if isinstance(v, int):
        return v
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def stats_of(values, integer=False, keys=("count", "nan_count", "inf_count", "min", "max", "sum", "mean", "var", "std")):
    """Expected statistics of exactly-representable values (already rounded to the dtype)."""
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    nan = len(values) - len(vals)
    inf = sum(1 for v in vals if isinstance(v, float) and math.isinf(v))
    out = {"count": len(vals), "nan_count": nan, "inf_count": inf}
    if vals:
        lo, hi = min(vals), max(vals)
        out["min"] = int(lo) if integer else num(float(lo))
        out["max"] = int(hi) if integer else num(float(hi))
        if inf:
            s = sum(float(v) for v in vals)  # inf, -inf or nan
            out["sum"] = num(s)
            out["mean"] = num(s)
            out["var"] = "nan"
            out["std"] = "nan"
        else:
            fl = [float(v) for v in vals]
            s = math.fsum(fl)
            m = s / len(fl)
            var = math.fsum((x - m) ** 2 for x in fl) / len(fl)
            out.update({"sum": s, "mean": m, "var": var, "std": math.sqrt(var)})
    else:
        out.update({"min": None, "max": None, "sum": 0.0, "mean": None, "var": None, "std": None})
    return {k: out[k] for k in keys}


# ---------------------------------------------------------------- safetensors

def st_bytes(header, data, pad=True):
    """8-byte length + header + data. `header` is a dict (JSON-encoded) or raw bytes."""
    if isinstance(header, dict):
        h = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if pad:
            h += b" " * (-len(h) % 8)
    else:
        h = header
    return struct.pack("<Q", len(h)) + h + data


def st_file(name, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes) laid out back to back in that order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for tname, dtype, shape, b in tensors:
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    write(name, st_bytes(header, data))


def pack(fmt, values):
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def t(name, dtype, shape, offsets):
    return {name: {"dtype": dtype, "shape": shape, "data_offsets": offsets}}


def entries(*parts):
    out = {}
    for p in parts:
        out.update(p)
    return out


# -- rejects
write("st_empty.safetensors", b"")
reject("st_empty", ["st_empty.safetensors"], "empty")

write("st_7_bytes.safetensors", b"\x10\x00\x00\x00\x00\x00\x00")
reject("st_7_bytes", ["st_7_bytes.safetensors"], "too short")

write("st_header_past_eof.safetensors", struct.pack("<Q", 1000) + b'{"a":{}}')
reject("st_header_past_eof", ["st_header_past_eof.safetensors"], "past the end")

write("st_header_2p63.safetensors", struct.pack("<Q", 1 << 63) + b"{}")
reject("st_header_2p63", ["st_header_2p63.safetensors"], "header length")

write("st_header_u64max.safetensors", struct.pack("<Q", (1 << 64) - 1) + b"{}")
reject("st_header_u64max", ["st_header_u64max.safetensors"], "header length")

write("st_header_len_0.safetensors", struct.pack("<Q", 0) + b"\x00\x00\x00\x00")
reject("st_header_len_0", ["st_header_len_0.safetensors"], "JSON")

write("st_header_not_json.safetensors", st_bytes(b"this is not json", b""))
reject("st_header_not_json", ["st_header_not_json.safetensors"], "JSON")

write("st_header_array.safetensors", st_bytes(b"[1, 2, 3]", b""))
reject("st_header_array", ["st_header_array.safetensors"], "JSON object")

write("st_header_not_utf8.safetensors", st_bytes(b'{"a\xff\xfe":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))
reject("st_header_not_utf8", ["st_header_not_utf8.safetensors"], "UTF-8")

write(
    "st_header_trailing_text.safetensors",
    st_bytes(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} xyz', b"\0" * 4),
)
reject("st_header_trailing_text", ["st_header_trailing_text.safetensors"], "JSON")

dup = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
write("st_duplicate_names.safetensors", st_bytes(dup, b"\0" * 8))
reject("st_duplicate_names", ["st_duplicate_names.safetensors"], "duplicate")

# A duplicate name with a line break in it: the message must stay on one line.
dup_nl = b'{"a\\nb":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a\\nb":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
write("st_duplicate_newline_names.safetensors", st_bytes(dup_nl, b"\0" * 8))
reject("st_duplicate_newline_names", ["st_duplicate_newline_names.safetensors"], "duplicate")

write("st_unknown_dtype.safetensors", st_bytes(t("a", "F128", [1], [0, 16]), b"\0" * 16))
reject("st_unknown_dtype", ["st_unknown_dtype.safetensors"], "F128")

write("st_dtype_not_string.safetensors", st_bytes(t("a", 32, [1], [0, 4]), b"\0" * 4))
reject("st_dtype_not_string", ["st_dtype_not_string.safetensors"], "dtype")

write("st_shape_overflow.safetensors", st_bytes(t("a", "F32", [1 << 32, (1 << 32) + 1], [0, 4]), b"\0" * 4))
reject("st_shape_overflow", ["st_shape_overflow.safetensors"], "64 bits")

write("st_bytes_overflow.safetensors", st_bytes(t("a", "F64", [1 << 62], [0, 8]), b"\0" * 8))
reject("st_bytes_overflow", ["st_bytes_overflow.safetensors"], "64 bits")

write("st_size_mismatch.safetensors", st_bytes(t("a", "F32", [3], [0, 8]), b"\0" * 8))
reject("st_size_mismatch", ["st_size_mismatch.safetensors"], "12 bytes")

write("st_dtype_size_mismatch.safetensors", st_bytes(t("a", "F64", [2], [0, 8]), b"\0" * 8))
reject("st_dtype_size_mismatch", ["st_dtype_size_mismatch.safetensors"], "16 bytes")

write("st_offsets_past_buffer.safetensors", st_bytes(t("a", "F32", [250], [0, 1000]), b"\0" * 12))
reject("st_offsets_past_buffer", ["st_offsets_past_buffer.safetensors"], "past the end")

write("st_offsets_huge.safetensors", st_bytes(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1e30]}}', b"\0" * 4))
reject("st_offsets_huge", ["st_offsets_huge.safetensors"], "data_offsets")

write("st_offsets_negative.safetensors", st_bytes(t("a", "F32", [1], [-4, 0]), b"\0" * 4))
reject("st_offsets_negative", ["st_offsets_negative.safetensors"], "data_offsets")

write("st_begin_after_end.safetensors", st_bytes(t("a", "F32", [1], [8, 4]), b"\0" * 8))
reject("st_begin_after_end", ["st_begin_after_end.safetensors"], "after end")

write("st_overlap.safetensors", st_bytes(entries(t("a", "F32", [2], [0, 8]), t("b", "F32", [2], [4, 12])), b"\0" * 12))
reject("st_overlap", ["st_overlap.safetensors"], "overlap")

write("st_gap.safetensors", st_bytes(entries(t("a", "F32", [2], [0, 8]), t("b", "F32", [2], [12, 20])), b"\0" * 20))
reject("st_gap", ["st_gap.safetensors"], "gap")

write("st_gap_at_start.safetensors", st_bytes(t("a", "F32", [2], [4, 12]), b"\0" * 12))
reject("st_gap_at_start", ["st_gap_at_start.safetensors"], "gap")

write("st_trailing_data.safetensors", st_bytes(t("a", "F32", [2], [0, 8]), b"\0" * 11))
reject("st_trailing_data", ["st_trailing_data.safetensors"], "trailing")

write("st_no_tensors_trailing_data.safetensors", st_bytes(b"{}", b"\0" * 5))
reject("st_no_tensors_trailing_data", ["st_no_tensors_trailing_data.safetensors"], "trailing")

write("st_rank0.safetensors", st_bytes(t("a", "F32", [], [0, 4]), b"\0" * 4))
reject("st_rank0", ["st_rank0.safetensors"], "rank 0")

write("st_rank3.safetensors", st_bytes(t("a", "F32", [2, 2, 2], [0, 32]), b"\0" * 32))
reject("st_rank3", ["st_rank3.safetensors"], "rank 3")

write("st_negative_dim.safetensors", st_bytes(t("a", "F32", [-1], [0, 4]), b"\0" * 4))
reject("st_negative_dim", ["st_negative_dim.safetensors"], "shape")

write("st_float_dim.safetensors", st_bytes(t("a", "F32", [2.5], [0, 4]), b"\0" * 4))
reject("st_float_dim", ["st_float_dim.safetensors"], "shape")

write(
    "st_different_lengths.safetensors",
    st_bytes(entries(t("a", "F32", [2], [0, 8]), t("b", "F32", [3], [8, 20])), b"\0" * 20),
)
reject("st_different_lengths", ["st_different_lengths.safetensors"], "row count")

write("st_missing_field.safetensors", st_bytes(b'{"a":{"dtype":"F32","shape":[1]}}', b"\0" * 4))
reject("st_missing_field", ["st_missing_field.safetensors"], "data_offsets")

write(
    "st_unknown_field.safetensors",
    st_bytes(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"strides":[1]}}', b"\0" * 4),
)
reject("st_unknown_field", ["st_unknown_field.safetensors"], "strides")

write("st_entry_not_object.safetensors", st_bytes(b'{"a":[1,2,3]}', b""))
reject("st_entry_not_object", ["st_entry_not_object.safetensors"], "JSON")

write("st_empty_name.safetensors", st_bytes(t("", "F32", [1], [0, 4]), b"\0" * 4))
reject("st_empty_name", ["st_empty_name.safetensors"], "empty tensor name")

write(
    "st_metadata_not_string.safetensors",
    st_bytes(entries({"__metadata__": {"format": 7}}, t("a", "F32", [1], [0, 4])), b"\0" * 4),
)
reject("st_metadata_not_string", ["st_metadata_not_string.safetensors"], "__metadata__")

# Column `x:0` from a 1-D tensor and from column 0 of the 2-D tensor `x`.
write(
    "st_clashing_columns.safetensors",
    st_bytes(entries(t("x:0", "F32", [2], [0, 8]), t("x", "F32", [2, 1], [8, 16])), b"\0" * 16),
)
reject("st_clashing_columns", ["st_clashing_columns.safetensors"], "x:0")

# 2^20 + 1 columns from a header of a few dozen bytes: must not allocate per column first.
write("st_too_many_columns.safetensors", st_bytes(t("w", "F32", [0, (1 << 20) + 1], [0, 0]), b""))
reject("st_too_many_columns", ["st_too_many_columns.safetensors"], "columns")

deep = b'{"a":{"dtype":"F32","shape":' + b"[" * 5000 + b"]" * 5000 + b',"data_offsets":[0,4]}}'
write("st_deep_nesting.safetensors", st_bytes(deep, b"\0" * 4))
reject("st_deep_nesting", ["st_deep_nesting.safetensors"], "JSON")

write("unknown_format.dat", b"hello, I am not a dataset\n")
reject("unknown_format", ["unknown_format.dat"], "unknown format")

reject("missing_file", ["does_not_exist.safetensors"], "No such file")

# A 5,000-character name in a duplicate: the message must stay short and on one line.
long = "n" * 5000
dup_long = ('{"%s":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"%s":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' % (long, long)).encode()
write("st_duplicate_long_names.safetensors", st_bytes(dup_long, b"\0" * 8))
reject("st_duplicate_long_names", ["st_duplicate_long_names.safetensors"], "duplicate")

write("st_metadata_not_object.safetensors", st_bytes(entries({"__metadata__": [1]}, t("a", "F32", [1], [0, 4])), b"\0" * 4))
reject("st_metadata_not_object", ["st_metadata_not_object.safetensors"], "__metadata__")

# A zero-width 2-D tensor with 2^40 rows next to a 3-row column.
write(
    "st_zero_width_rows_mismatch.safetensors",
    st_bytes(entries(t("a", "F32", [3], [0, 12]), t("z", "F32", [1 << 40, 0], [12, 12])), b"\0" * 12),
)
reject("st_zero_width_rows_mismatch", ["st_zero_width_rows_mismatch.safetensors"], "row count")

# -- accepts
vals = [1.0, 2.0, 3.0, 4.0]
st_file("st_zero_rows.safetensors", [("a", "F32", [0], b""), ("k", "I32", [0], b""), ("m", "F32", [0, 2], b"")])
accept(
    "st_zero_rows",
    ["st_zero_rows.safetensors"],
    0,
    ["a", "k", "m:0", "m:1"],
    {"a": stats_of([]), "k": stats_of([], integer=True), "m:1": stats_of([])},
)

st_file("st_one_row.safetensors", [("a", "F32", [1], pack("f", [2.5])), ("k", "I16", [1], pack("h", [-7]))])
accept(
    "st_one_row",
    ["st_one_row.safetensors"],
    1,
    ["a", "k"],
    {"a": stats_of([2.5]), "k": stats_of([-7], integer=True)},
)

nan = float("nan")
inf = float("inf")
st_file("st_all_nan.safetensors", [("n", "F32", [5], pack("f", [nan] * 5)), ("v", "F64", [5], pack("d", [1, 2, 3, 4, 5]))])
accept(
    "st_all_nan",
    ["st_all_nan.safetensors"],
    5,
    ["n", "v"],
    {"n": stats_of([nan] * 5), "v": stats_of([1.0, 2.0, 3.0, 4.0, 5.0])},
)

both = [1.0, inf, -inf, 2.0, nan]
pos = [1.0, inf, 2.0]
st_file("st_inf.safetensors", [("both", "F32", [5], pack("f", both)), ("pos", "F64", [5], pack("d", pos + [nan, -0.0]))])
accept(
    "st_inf",
    ["st_inf.safetensors"],
    5,
    ["both", "pos"],
    {
        "both": stats_of(both, keys=("count", "nan_count", "inf_count", "min", "max", "sum")),
        "pos": stats_of(pos + [nan, -0.0], keys=("count", "nan_count", "inf_count", "min", "max", "sum", "mean")),
    },
)

den = [f32(1e-45), f32(1e-40), f32(-1e-40), 0.0, f32(1.17549435e-38)]
den64 = [5e-324, 1e-310, -2.5e-320]
st_file("st_denormals.safetensors", [("d", "F32", [5], pack("f", den)), ("e", "F64", [5], pack("d", den64 + [0.0, 1.0]))])
accept(
    "st_denormals",
    ["st_denormals.safetensors"],
    5,
    ["d", "e"],
    {
        "d": stats_of(den, keys=("count", "nan_count", "inf_count", "min", "max", "sum")),
        "e": stats_of(den64 + [0.0, 1.0], keys=("count", "min", "max")),
    },
    note="subnormals must not be flushed to zero",
)

h_vals = [f16(v) for v in [1.0, -2.5, 65504.0, 6.103515625e-05, 5.960464477539063e-08, 0.1]]
h_special = [f16(v) for v in [nan, inf, -1.0, 0.5, -inf, 3.0]]
b_vals = [1.0, -3.0, struct.unpack("<f", struct.pack("<I", 0x7F7F << 16))[0], 2.0 ** -133, bf16(0.1), bf16(-1e30)]
st_file(
    "st_f16_bf16.safetensors",
    [
        ("h", "F16", [6], pack("e", h_vals)),
        ("hs", "F16", [6], pack("e", h_special)),
        ("b", "BF16", [6], pack("H", [bf16_bits(v) for v in b_vals])),
    ],
)
accept(
    "st_f16_bf16",
    ["st_f16_bf16.safetensors"],
    6,
    ["h", "hs", "b"],
    {
        "h": stats_of(h_vals),
        "hs": stats_of(h_special, keys=("count", "nan_count", "inf_count", "min", "max")),
        "b": stats_of(b_vals, keys=("count", "nan_count", "inf_count", "min", "max", "sum")),
    },
)

ints = [
    ("i8", "I8", "b", [-128, 127, 0]),
    ("u8", "U8", "B", [0, 255, 7]),
    ("i16", "I16", "h", [-32768, 32767, 1]),
    ("u16", "U16", "H", [65535, 0, 2]),
    ("i32", "I32", "i", [-(2 ** 31), 2 ** 31 - 1, 3]),
    ("u32", "U32", "I", [2 ** 32 - 1, 0, 4]),
    ("i64", "I64", "q", [-(2 ** 63), 2 ** 53 + 1, 0]),
    ("u64", "U64", "Q", [2 ** 64 - 1, 2 ** 53 + 1, 1]),
]
st_file("st_int_types.safetensors", [(n, d, [3], pack(c, v)) for n, d, c, v in ints] + [("flag", "BOOL", [3], bytes([1, 0, 1]))])
accept(
    "st_int_types",
    ["st_int_types.safetensors"],
    3,
    [n for n, _, _, _ in ints] + ["flag"],
    {n: stats_of(v, integer=True, keys=("count", "nan_count", "inf_count", "min", "max")) for n, _, _, v in ints},
    stats_columns=[n for n, _, _, _ in ints],
    note="min/max of integer columns are exact JSON integers; bool is not a numeric column for stats",
)

many = [("t%03d" % i, "F32", [2], pack("f", [float(i), float(-i)])) for i in range(300)]
st_file("st_300_tensors.safetensors", many)
accept(
    "st_300_tensors",
    ["st_300_tensors.safetensors"],
    2,
    ["t%03d" % i for i in range(300)],
    {"t000": stats_of([0.0, -0.0]), "t150": stats_of([150.0, -150.0]), "t299": stats_of([299.0, -299.0])},
)

names = ["température", "数据", "emoji😀", "with space", "a:b"]
st_file("st_non_ascii_names.safetensors", [(n, "F32", [2], pack("f", [float(i), 10.0 + i])) for i, n in enumerate(names)])
accept(
    "st_non_ascii_names",
    ["st_non_ascii_names.safetensors"],
    2,
    names,
    {"数据": stats_of([1.0, 11.0]), "emoji😀": stats_of([2.0, 12.0])},
)

x = [[1.0, 10.0, -1.0], [2.0, 20.0, -2.0], [3.0, 30.0, -3.0], [4.0, 40.0, nan]]
st_file("st_2d.safetensors", [("x", "F32", [4, 3], pack("f", [v for row in x for v in row])), ("k", "U8", [4], bytes([0, 1, 0, 1]))])
accept(
    "st_2d",
    ["st_2d.safetensors"],
    4,
    ["x:0", "x:1", "x:2", "k"],
    {"x:%d" % j: stats_of([row[j] for row in x]) for j in range(3)},
)

# Header lists `b` first but its data comes second: columns come out in data order.
write(
    "st_unsorted_offsets.safetensors",
    st_bytes(entries(t("b", "F32", [2], [8, 16]), t("a", "F32", [2], [0, 8])), pack("f", [1.0, 2.0, 30.0, 40.0])),
)
accept(
    "st_unsorted_offsets",
    ["st_unsorted_offsets.safetensors"],
    2,
    ["a", "b"],
    {"a": stats_of([1.0, 2.0]), "b": stats_of([30.0, 40.0])},
    note="header order differs from data order; valid safetensors, columns in data-offset order",
)

st_file("st_metadata.safetensors", [("a", "F32", [2], pack("f", [1.0, 3.0]))], metadata={"format": "pt", "note": "ok"})
accept("st_metadata", ["st_metadata.safetensors"], 2, ["a"], {"a": stats_of([1.0, 3.0])})

write("st_no_tensors.safetensors", st_bytes(b"{}", b""))
accept("st_no_tensors", ["st_no_tensors.safetensors"], 0, [])

# Zero-size tensor at the same offset as a non-empty one, plus a zero-width 2-D tensor.
write(
    "st_zero_width.safetensors",
    st_bytes(entries(t("a", "F32", [2], [0, 8]), t("z", "F32", [2, 0], [0, 0])), pack("f", [5.0, 6.0])),
)
accept("st_zero_width", ["st_zero_width.safetensors"], 2, ["a"], {"a": stats_of([5.0, 6.0])})


# ---------------------------------------------------------------- npy

def npy_bytes(header, data, major=1, minor=0, pad=True):
    h = header.encode("utf-8") if isinstance(header, str) else header
    prelude = 10 if major == 1 else 12
    if pad:
        h = h + b" " * (-(prelude + len(h) + 1) % 64) + b"\n"
    length = struct.pack("<H", len(h)) if major == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([major, minor]) + length + h + data


def npy_dict(descr, shape, fortran=False):
    shape_text = "(%d,)" % shape[0] if len(shape) == 1 else "(" + ", ".join(str(d) for d in shape) + ")"
    return "{'descr': %r, 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", shape_text)


write("npy_bad_magic.npy", b"\x93NUMPZ\x01\x00" + b"\x10\x00" + b"{}" + b" " * 14)
reject("npy_bad_magic", ["npy_bad_magic.npy"], "magic")

write("npy_bad_version.npy", npy_bytes(npy_dict("<f4", [1]), b"\0" * 4, major=9))
reject("npy_bad_version", ["npy_bad_version.npy"], "version")

write("npy_7_bytes.npy", b"\x93NUMPY\x01")
reject("npy_7_bytes", ["npy_7_bytes.npy"], "too short")

write("npy_header_past_eof.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + b"{'descr': '<f4'")
reject("npy_header_past_eof", ["npy_header_past_eof.npy"], "past the end")

write("npy_v2_header_past_eof.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFFF) + b"{}")
reject("npy_v2_header_past_eof", ["npy_v2_header_past_eof.npy"], "past the end")

write("npy_big_endian.npy", npy_bytes(npy_dict(">f4", [3]), struct.pack(">3f", 1, 2, 3)))
reject("npy_big_endian", ["npy_big_endian.npy"], "big-endian")

write("npy_object.npy", npy_bytes(npy_dict("|O", [2]), b"\0" * 16))
reject("npy_object", ["npy_object.npy"], "object")

write(
    "npy_structured.npy",
    npy_bytes("{'descr': [('x', '<f4'), ('y', '<i4')], 'fortran_order': False, 'shape': (2,), }", b"\0" * 16),
)
reject("npy_structured", ["npy_structured.npy"], "structured")

write("npy_complex.npy", npy_bytes(npy_dict("<c8", [2]), b"\0" * 16))
reject("npy_complex", ["npy_complex.npy"], "complex")

write("npy_string.npy", npy_bytes(npy_dict("<U3", [2]), b"\0" * 24))
reject("npy_string", ["npy_string.npy"], "string")

write("npy_short_data.npy", npy_bytes(npy_dict("<f4", [10]), b"\0" * 36))
reject("npy_short_data", ["npy_short_data.npy"], "truncated")

write("npy_long_data.npy", npy_bytes(npy_dict("<f4", [2]), b"\0" * 12))
reject("npy_long_data", ["npy_long_data.npy"], "trailing")

write("npy_huge_shape.npy", npy_bytes(npy_dict("<f8", [1 << 40]), b"\0" * 8))
reject("npy_huge_shape", ["npy_huge_shape.npy"], "truncated")

write("npy_rank0.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", struct.pack("<f", 1.5)))
reject("npy_rank0", ["npy_rank0.npy"], "scalar")

write("npy_rank3.npy", npy_bytes(npy_dict("<f4", [2, 2, 2]), b"\0" * 32))
reject("npy_rank3", ["npy_rank3.npy"], "rank 3")

write("npy_missing_key.npy", npy_bytes("{'descr': '<f4', 'shape': (2,), }", b"\0" * 8))
reject("npy_missing_key", ["npy_missing_key.npy"], "fortran_order")

write("npy_header_not_dict.npy", npy_bytes("['descr', '<f4']", b"\0" * 8))
reject("npy_header_not_dict", ["npy_header_not_dict.npy"], "header")

write("npy_deep_nesting.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 3000 + ")" * 3000 + "}", b""))
reject("npy_deep_nesting", ["npy_deep_nesting.npy"], "deep")

write("npy_negative_dim.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", b""))
reject("npy_negative_dim", ["npy_negative_dim.npy"], "negative")

# -- accepts
fo = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]
column_major = [fo[r][c] for c in range(3) for r in range(4)]
write("npy_fortran_2d.npy", npy_bytes(npy_dict("<f4", [4, 3], fortran=True), pack("f", column_major)))
accept(
    "npy_fortran_2d",
    ["npy_fortran_2d.npy"],
    4,
    ["npy_fortran_2d:0", "npy_fortran_2d:1", "npy_fortran_2d:2"],
    {"npy_fortran_2d:%d" % j: stats_of([row[j] for row in fo]) for j in range(3)},
    note="Fortran order must be read column-major: column j is fo[:, j]",
)

c_rows = [[1.5, -2.0], [2.5, -4.0], [nan, -6.0]]
write("npy_c_2d.npy", npy_bytes(npy_dict("<f8", [3, 2]), pack("d", [v for r in c_rows for v in r])))
accept(
    "npy_c_2d",
    ["npy_c_2d.npy"],
    3,
    ["npy_c_2d:0", "npy_c_2d:1"],
    {"npy_c_2d:%d" % j: stats_of([r[j] for r in c_rows]) for j in range(2)},
)

write("npy_fortran_1d.npy", npy_bytes(npy_dict("<i4", [3], fortran=True), pack("i", [5, -6, 7])))
accept("npy_fortran_1d", ["npy_fortran_1d.npy"], 3, ["npy_fortran_1d"], {"npy_fortran_1d": stats_of([5, -6, 7], integer=True)})

write("npy_v2.npy", npy_bytes(npy_dict("<f2", [2]), pack("e", [0.5, -0.25]), major=2))
accept("npy_v2", ["npy_v2.npy"], 2, ["npy_v2"], {"npy_v2": stats_of([0.5, -0.25])})

write("npy_v3_plain.npy", npy_bytes(npy_dict("|u1", [3]), bytes([3, 1, 2]), major=3))
accept("npy_v3_plain", ["npy_v3_plain.npy"], 3, ["npy_v3_plain"], {"npy_v3_plain": stats_of([3, 1, 2], integer=True)})

write("npy_zero_rows.npy", npy_bytes(npy_dict("<f4", [0]), b""))
accept("npy_zero_rows", ["npy_zero_rows.npy"], 0, ["npy_zero_rows"], {"npy_zero_rows": stats_of([])})

write("npy_one_row_2d.npy", npy_bytes(npy_dict("<f4", [1, 2]), pack("f", [-1.0, 8.0])))
accept(
    "npy_one_row_2d",
    ["npy_one_row_2d.npy"],
    1,
    ["npy_one_row_2d:0", "npy_one_row_2d:1"],
    {"npy_one_row_2d:0": stats_of([-1.0]), "npy_one_row_2d:1": stats_of([8.0])},
)

write("npy_unpadded.npy", npy_bytes("{'descr':'<i8','fortran_order':False,'shape':(2,)}", pack("q", [2 ** 62, -5]), pad=False))
accept("npy_unpadded", ["npy_unpadded.npy"], 2, ["npy_unpadded"], {"npy_unpadded": stats_of([2 ** 62, -5], integer=True, keys=("min", "max"))})

write("npy_long_suffix.npy", npy_bytes("{'descr': '=f4', 'fortran_order': False, 'shape': (3L,), }", pack("f", [1.0, -1.0, 0.5])))
accept("npy_long_suffix", ["npy_long_suffix.npy"], 3, ["npy_long_suffix"], {"npy_long_suffix": stats_of([1.0, -1.0, 0.5])})

write("npy_bool.npy", npy_bytes(npy_dict("|b1", [4]), bytes([1, 0, 0, 1])))
accept("npy_bool", ["npy_bool.npy"], 4, ["npy_bool"], stats_columns=[])

write("npy_no_extension.data", npy_bytes(npy_dict("<u2", [2]), pack("H", [65535, 1])))
accept("npy_no_extension", ["npy_no_extension.data"], 2, ["npy_no_extension"], {"npy_no_extension": stats_of([65535, 1], integer=True)})

# Side by side: a.npy and b.npy are one dataset of columns `a` and `b`.
a_vals = [1.0, 2.0, 3.0]
b_vals = [10, 20, 30]
write("a.npy", npy_bytes(npy_dict("<f4", [3]), pack("f", a_vals)))
write("b.npy", npy_bytes(npy_dict("<i4", [3]), pack("i", b_vals)))
accept("side_by_side", ["a.npy", "b.npy"], 3, ["a", "b"], {"a": stats_of(a_vals), "b": stats_of(b_vals, integer=True)})

st_file("st_side.safetensors", [("z", "F64", [3], pack("d", [0.5, 0.25, 0.125]))])
accept("side_by_side_mixed_formats", ["st_side.safetensors", "a.npy"], 3, ["z", "a"], {"z": stats_of([0.5, 0.25, 0.125])})

write("c4.npy", npy_bytes(npy_dict("<f4", [4]), pack("f", [1, 2, 3, 4])))
reject("side_by_side_row_mismatch", ["a.npy", "c4.npy"], "row", error_file="c4.npy")

write("dup/a.npy", npy_bytes(npy_dict("<f4", [3]), pack("f", [7, 8, 9])))
reject("side_by_side_duplicate_column", ["a.npy", "dup/a.npy"], "twice", error_file="dup/a.npy")

reject("side_by_side_bad_second", ["a.npy", "npy_big_endian.npy"], "big-endian", error_file="npy_big_endian.npy")

# ---------------------------------------------------------------- raw

raw_rows = [[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, nan, -4.0], [0.5, 0.25, 0.125, inf]]
write("raw4.bin", pack("f", [v for r in raw_rows for v in r]))
accept(
    "raw_f32_4",
    ["raw4.bin"],
    3,
    ["raw4:0", "raw4:1", "raw4:2", "raw4:3"],
    {"raw4:%d" % j: stats_of([r[j] for r in raw_rows], keys=("count", "nan_count", "inf_count", "min", "max")) for j in range(4)},
    args=["--raw", "f32:4"],
)

write("raw_ragged.bin", b"\0" * 50)
reject("raw_ragged", ["raw_ragged.bin"], "multiple", args=["--raw", "f32:4"])

reject("raw_zero_columns", ["raw4.bin"], "column", args=["--raw", "f32:0"])
reject("raw_too_many_columns", ["raw4.bin"], "columns", args=["--raw", "u8:99999999999"])

write("raw_empty.bin", b"")
reject("raw_empty", ["raw_empty.bin"], "empty file", args=["--raw", "i16:2"])


with open(os.path.join(HERE, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(CASES, f, ensure_ascii=False, indent=1, allow_nan=False)
    f.write("\n")
print("wrote %d cases" % len(CASES))
