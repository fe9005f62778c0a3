//! Parser for `.safetensors` files: validates the JSON header strictly and maps every tensor
//! to columns.
//!
//! Layout: an 8-byte little-endian header length `H`, `H` bytes of UTF-8 JSON, then the data
//! buffer. Each header key other than `__metadata__` names a tensor described by
//! `{"dtype", "shape", "data_offsets"}`, with offsets relative to the data buffer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::parsed::{ColumnLayout, ParsedFile, TensorInfo};
use crate::source::parsed::{escape, show};

/// Largest header accepted, in bytes (the same limit as the reference implementation).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Most columns one file may produce; bounds the memory spent on layouts whatever the header says.
const MAX_COLUMNS: u64 = 1 << 20;

/// The header key that holds string metadata instead of a tensor.
const METADATA_KEY: &str = "__metadata__";

/// Fields of one header object, in file order, duplicates kept (so that they can be rejected).
type Fields = Vec<(String, Value)>;

/// Parses and validates a whole `.safetensors` file held in `bytes`.
///
/// Every tensor must be 1-D `[N]` or 2-D `[N, k]` with the same `N`, the tensors must tile the
/// data buffer exactly (no gaps, overlaps or trailing bytes), and all offsets in the result are
/// absolute file offsets. Tensors come out in data-offset order; a 1-D tensor `x` becomes
/// column `x`, a 2-D tensor `x` becomes columns `x:0` .. `x:{k-1}`.
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<ParsedFile> {
    parse(bytes).map_err(|message| Error::format(path, message))
}

/// One tensor after its header entry has been checked on its own.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
}

fn parse(bytes: &[u8]) -> Result<ParsedFile, String> {
    if bytes.is_empty() {
        return Err("empty file (a safetensors file starts with an 8-byte header length)".into());
    }
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(format!("file is only {} bytes, too short for the 8-byte header length", bytes.len()));
    };
    let header_len = u64::from_le_bytes(*prefix);
    // usize -> u64 is lossless on every supported (at most 64-bit) target.
    let after_prefix = bytes.len() as u64 - 8;
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes"));
    }
    if header_len > after_prefix {
        return Err(format!(
            "header length {header_len} runs past the end of the file \
             ({after_prefix} bytes follow the length prefix)"
        ));
    }
    // Cannot truncate: header_len <= bytes.len() - 8.
    let data_start = 8 + header_len as usize;
    let header = std::str::from_utf8(&bytes[8..data_start])
        .map_err(|e| format!("header is not valid UTF-8 (bad byte at header offset {})", e.valid_up_to()))?;
    let raw_entries = parse_header_json(header).map_err(|e| format!("header is not a valid JSON object: {e}"))?;
    let buffer_len = after_prefix - header_len;

    let mut seen = HashSet::with_capacity(raw_entries.len());
    for (name, _) in &raw_entries {
        if !seen.insert(name.as_str()) {
            return Err(if name == METADATA_KEY {
                format!("duplicate key `{METADATA_KEY}`")
            } else {
                format!("duplicate tensor name {}", show(name))
            });
        }
    }
    drop(seen);

    let mut entries = Vec::with_capacity(raw_entries.len());
    let mut total_columns: u64 = 0;
    for (name, fields) in raw_entries {
        if name == METADATA_KEY {
            check_metadata(fields)?;
            continue;
        }
        let entry = check_entry(name, fields, buffer_len)?;
        total_columns += column_count(&entry);
        if total_columns > MAX_COLUMNS {
            return Err(format!("the tensors have more than {MAX_COLUMNS} columns in all, which is not supported"));
        }
        entries.push(entry);
    }

    // Zero-sized tensors sort before a tensor starting at the same offset.
    entries.sort_by_key(|e| (e.begin, e.end));
    check_tiling(&entries, buffer_len)?;

    // Indexing shape[0] cannot fail: check_entry accepts only rank 1 and 2.
    let rows = entries.first().map_or(0, |e| e.shape[0]);
    if let Some(first) = entries.first() {
        for e in &entries[1..] {
            if e.shape[0] != rows {
                return Err(format!(
                    "tensors {} and {} have different row counts ({} and {}); \
                     every tensor must have the same leading dimension",
                    show(&first.name),
                    show(&e.name),
                    rows,
                    e.shape[0]
                ));
            }
        }
    }

    build(entries, rows, data_start as u64, total_columns)
}

/// Deserializes the header into its entries, keeping order and duplicates.
fn parse_header_json(text: &str) -> serde_json::Result<Vec<(String, Fields)>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let entries = (&mut de).deserialize_map(HeaderVisitor)?;
    // Rejects anything but whitespace (such as the customary space padding) after the object.
    de.end()?;
    Ok(entries)
}

/// Visits the top-level object: tensor name -> object of fields.
struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Vec<(String, Fields)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to tensor descriptions")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let fields = map.next_value_seed(ObjectSeed { name: &name })?;
            entries.push((name, fields));
        }
        Ok(entries)
    }
}

/// Deserializes one entry's object, naming the entry if the value is not an object.
struct ObjectSeed<'a> {
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Fields;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Fields, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.name == METADATA_KEY {
            write!(f, "a JSON object of strings for `{METADATA_KEY}`")
        } else {
            write!(f, "a JSON object describing tensor {}", show(self.name))
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Vec::new();
        while let Some(field) = map.next_entry::<String, Value>()? {
            fields.push(field);
        }
        Ok(fields)
    }
}

/// Checks that `__metadata__` maps unique keys to strings.
fn check_metadata(fields: Fields) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(fields.len());
    for (key, value) in &fields {
        if !seen.insert(key.as_str()) {
            return Err(format!("duplicate key {} in `{METADATA_KEY}`", show(key)));
        }
        if !value.is_string() {
            return Err(format!("`{METADATA_KEY}` value for {} must be a string, found {}", show(key), kind(value)));
        }
    }
    Ok(())
}

/// Checks one tensor's fields on their own (everything but the tiling and row count).
fn check_entry(name: String, fields: Fields, buffer_len: u64) -> Result<Entry, String> {
    let tensor = show(&name);
    if name.is_empty() {
        return Err("empty tensor name".into());
    }
    let (mut dtype, mut shape, mut offsets) = (None, None, None);
    for (key, value) in fields {
        let slot = match key.as_str() {
            "dtype" => &mut dtype,
            "shape" => &mut shape,
            "data_offsets" => &mut offsets,
            _ => {
                return Err(format!("tensor {tensor} has unknown field {} (expected dtype, shape, data_offsets)", show(&key)));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("tensor {tensor} has field `{key}` twice"));
        }
    }
    let missing = |field: &str| format!("tensor {tensor} is missing field `{field}`");
    let dtype = dtype.ok_or_else(|| missing("dtype"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;
    let offsets = offsets.ok_or_else(|| missing("data_offsets"))?;

    let Value::String(dtype_name) = &dtype else {
        return Err(format!("tensor {tensor}: `dtype` must be a string, found {}", kind(&dtype)));
    };
    let dtype =
        DType::from_safetensors_name(dtype_name).ok_or_else(|| format!("unsupported dtype {} for tensor {tensor}", escape(dtype_name)))?;

    let Value::Array(dims) = &shape else {
        return Err(format!("tensor {tensor}: `shape` must be an array of non-negative integers, found {}", kind(&shape)));
    };
    let shape = dims
        .iter()
        .map(|d| {
            d.as_u64().ok_or_else(|| {
                format!(
                    "tensor {tensor}: `shape` must be an array of non-negative integers, \
                     found an element that is {}",
                    describe_number(d)
                )
            })
        })
        .collect::<Result<Vec<u64>, String>>()?;
    if shape.is_empty() || shape.len() > 2 {
        return Err(format!(
            "tensor {tensor} has shape {} (rank {}); tilestream reads only 1-D columns \
             and 2-D [N, k] tensors",
            format_shape(&shape),
            shape.len()
        ));
    }

    let bad_offsets = || {
        format!(
            "tensor {tensor}: `data_offsets` must be an array of two non-negative integers \
             [begin, end]"
        )
    };
    let Value::Array(pair) = &offsets else {
        return Err(bad_offsets());
    };
    let [begin, end] = pair.as_slice() else {
        return Err(bad_offsets());
    };
    let (Some(begin), Some(end)) = (begin.as_u64(), end.as_u64()) else {
        return Err(bad_offsets());
    };

    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor {tensor}: shape {} has more elements than fit in 64 bits", format_shape(&shape)))?;
    let size = dtype.size() as u64;
    let nbytes = elements.checked_mul(size).ok_or_else(|| {
        format!("tensor {tensor}: shape {} of {} takes more bytes than fit in 64 bits", format_shape(&shape), dtype.safetensors_name())
    })?;
    if begin > end {
        return Err(format!("tensor {tensor}: data_offsets begin {begin} is after end {end}"));
    }
    if end > buffer_len {
        return Err(format!(
            "tensor {tensor}: data_offsets end {end} is past the end of the \
             {buffer_len}-byte data buffer"
        ));
    }
    if end - begin != nbytes {
        return Err(format!(
            "tensor {tensor}: dtype {} with shape {} needs {nbytes} bytes but data_offsets \
             [{begin}, {end}] span {}",
            dtype.safetensors_name(),
            format_shape(&shape),
            end - begin
        ));
    }
    let columns = match shape[..] {
        [_, k] => k,
        _ => 1,
    };
    if columns > MAX_COLUMNS {
        return Err(format!("tensor {tensor} has {columns} columns; at most {MAX_COLUMNS} are supported"));
    }
    Ok(Entry { name, dtype, shape, begin, end })
}

/// Checks that the entries (sorted by offset) tile the data buffer exactly.
fn check_tiling(entries: &[Entry], buffer_len: u64) -> Result<(), String> {
    let mut expected = 0u64;
    let mut previous: Option<&Entry> = None;
    for e in entries {
        if e.begin > expected {
            return Err(match previous {
                None => format!(
                    "the first tensor {} starts at data offset {}, leaving a gap: \
                     tensors must start at 0",
                    show(&e.name),
                    e.begin
                ),
                Some(p) => format!("gap of {} bytes between tensors {} and {}", e.begin - expected, show(&p.name), show(&e.name)),
            });
        }
        if e.begin < expected {
            let other = previous.map_or_else(String::new, |p| format!(" and {}", show(&p.name)));
            return Err(format!("tensors {}{other} overlap in the data buffer", show(&e.name)));
        }
        expected = e.end;
        previous = Some(e);
    }
    if buffer_len > expected {
        let extra = buffer_len - expected;
        return Err(if entries.is_empty() {
            format!("{extra} bytes of trailing data after a header that lists no tensors")
        } else {
            format!("{extra} bytes of trailing data after the last tensor")
        });
    }
    Ok(())
}

/// How many columns a checked entry produces.
fn column_count(e: &Entry) -> u64 {
    match e.shape[..] {
        [_, k] => k,
        _ => 1,
    }
}

/// Builds the tensors and columns with absolute offsets and rejects clashing column names.
fn build(entries: Vec<Entry>, rows: u64, data_start: u64, columns: u64) -> Result<ParsedFile, String> {
    // Bounded by MAX_COLUMNS, so it fits in usize and the allocation is modest.
    let columns = columns as usize;
    let mut layouts = Vec::with_capacity(columns);
    let mut owners = Vec::with_capacity(columns);
    let mut tensors = Vec::with_capacity(entries.len());
    for (index, e) in entries.into_iter().enumerate() {
        let size = e.dtype.size() as u64;
        let offset = data_start + e.begin;
        match e.shape[..] {
            [_, k] => {
                for j in 0..k {
                    layouts.push(ColumnLayout {
                        name: format!("{}:{j}", e.name),
                        dtype: e.dtype,
                        offset: offset + j * size,
                        stride: k * size,
                    });
                    owners.push(index);
                }
            }
            _ => {
                layouts.push(ColumnLayout { name: e.name.clone(), dtype: e.dtype, offset, stride: size });
                owners.push(index);
            }
        }
        tensors.push(TensorInfo { name: e.name, dtype: e.dtype, shape: e.shape, offset, bytes: e.end - e.begin });
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(layouts.len());
    for (column, &owner) in layouts.iter().zip(&owners) {
        if let Some(&other) = seen.get(column.name.as_str()) {
            return Err(format!(
                "column name {} is produced by both tensor {} and tensor {}",
                show(&column.name),
                show(&tensors[other].name),
                show(&tensors[owner].name)
            ));
        }
        seen.insert(&column.name, owner);
    }
    drop(seen);
    Ok(ParsedFile { format: "safetensors", rows, tensors, columns: layouts })
}

/// `[a, b]`, or just the rank when the shape is too long to print usefully.
fn format_shape(shape: &[u64]) -> String {
    if shape.len() > 8 {
        return format!("with {} dimensions", shape.len());
    }
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// A JSON value's kind, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A shape element that is not a u64, for messages.
fn describe_number(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const PATH: &str = "t.safetensors";

    /// Length prefix + header text + `data`.
    fn file_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Length prefix + header text + `data_len` zero bytes.
    fn file(header: &str, data_len: usize) -> Vec<u8> {
        file_with(header, &vec![0; data_len])
    }

    fn parse_ok(bytes: &[u8]) -> ParsedFile {
        match parse_safetensors(Path::new(PATH), bytes) {
            Ok(parsed) => parsed,
            Err(e) => panic!("expected a valid file, got: {e}"),
        }
    }

    /// Asserts an error whose one-line message contains `needle`; returns the message.
    fn assert_err(bytes: &[u8], needle: &str) -> String {
        match parse_safetensors(Path::new(PATH), bytes) {
            Ok(parsed) => panic!("expected an error containing {needle:?}, got {parsed:?}"),
            Err(e) => {
                assert!(matches!(e, Error::Format { .. }), "{e:?}");
                let message = e.to_string();
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                assert!(message.starts_with(&format!("{PATH}: ")), "{message}");
                assert!(!message.contains('\n'), "multi-line message {message:?}");
                message
            }
        }
    }

    /// One tensor entry's JSON.
    fn entry(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
    }

    fn header(entries: &[String]) -> String {
        format!("{{{}}}", entries.join(","))
    }

    /// The bytes of each row of `col`.
    fn column_values<'a>(bytes: &'a [u8], col: &ColumnLayout, rows: u64) -> Vec<&'a [u8]> {
        let size = col.dtype.size();
        (0..rows)
            .map(|r| {
                let at = (col.offset + r * col.stride) as usize;
                &bytes[at..at + size]
            })
            .collect()
    }

    fn col(name: &str, dtype: DType, offset: u64, stride: u64) -> ColumnLayout {
        ColumnLayout { name: name.into(), dtype, offset, stride }
    }

    // ---- valid files ----

    #[test]
    fn one_1d_tensor() {
        let h = header(&[entry("x", "F32", "[3]", 0, 12)]);
        let data: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = file_with(&h, &data);
        let p = parse_ok(&bytes);
        let base = 8 + h.len() as u64;
        assert_eq!(p.format, "safetensors");
        assert_eq!(p.rows, 3);
        assert_eq!(p.tensors, vec![TensorInfo { name: "x".into(), dtype: DType::F32, shape: vec![3], offset: base, bytes: 12 }]);
        assert_eq!(p.columns, vec![col("x", DType::F32, base, 4)]);
        let values: Vec<f32> =
            column_values(&bytes, &p.columns[0], 3).iter().map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(values, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn one_2d_tensor() {
        // [4, 3] f64: row-major, so column j starts at j * 8 and steps 24 bytes.
        let h = header(&[entry("emb", "F64", "[4, 3]", 0, 96)]);
        let data: Vec<u8> = (0..12).flat_map(|i| f64::from(i).to_le_bytes()).collect();
        let bytes = file_with(&h, &data);
        let p = parse_ok(&bytes);
        let base = 8 + h.len() as u64;
        assert_eq!(p.rows, 4);
        assert_eq!(
            p.columns,
            vec![col("emb:0", DType::F64, base, 24), col("emb:1", DType::F64, base + 8, 24), col("emb:2", DType::F64, base + 16, 24),]
        );
        assert_eq!(p.tensors[0].shape, vec![4, 3]);
        assert_eq!(p.tensors[0].bytes, 96);
        for (j, c) in p.columns.iter().enumerate() {
            let values: Vec<f64> = column_values(&bytes, c, 4).iter().map(|b| f64::from_le_bytes((*b).try_into().unwrap())).collect();
            let want: Vec<f64> = (0..4).map(|r| (r * 3 + j) as f64).collect();
            assert_eq!(values, want, "column {j}");
        }
    }

    #[test]
    fn several_tensors_come_out_in_offset_order() {
        // Header order b, a, c; data order a (u8), c ([2,2] i16), b (i64).
        let h = header(&[entry("b", "I64", "[2]", 10, 26), entry("a", "U8", "[2]", 0, 2), entry("c", "I16", "[2, 2]", 2, 10)]);
        let p = parse_ok(&file(&h, 26));
        let base = 8 + h.len() as u64;
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "b"]);
        let offsets: Vec<u64> = p.tensors.iter().map(|t| t.offset).collect();
        assert_eq!(offsets, [base, base + 2, base + 10]);
        assert_eq!(p.rows, 2);
        assert_eq!(
            p.columns,
            vec![
                col("a", DType::U8, base, 1),
                col("c:0", DType::I16, base + 2, 4),
                col("c:1", DType::I16, base + 4, 4),
                col("b", DType::I64, base + 10, 8),
            ]
        );
    }

    #[test]
    fn zero_rows() {
        let h = header(&[entry("a", "F32", "[0]", 0, 0), entry("b", "F16", "[0, 2]", 0, 0)]);
        let p = parse_ok(&file(&h, 0));
        let base = 8 + h.len() as u64;
        assert_eq!(p.rows, 0);
        assert_eq!(p.tensors.len(), 2);
        assert!(p.tensors.iter().all(|t| t.bytes == 0 && t.offset == base));
        let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b:0", "b:1"]);
        assert_eq!(p.columns[2], col("b:1", DType::F16, base + 2, 4));
    }

    #[test]
    fn zero_sized_tensor_next_to_others() {
        // [N, 0] tensors have no columns but still take part in the row count.
        let h = header(&[entry("a", "F32", "[2]", 0, 8), entry("e", "F32", "[2, 0]", 8, 8), entry("b", "U8", "[2]", 8, 10)]);
        let p = parse_ok(&file(&h, 10));
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "e", "b"]);
        let cols: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cols, ["a", "b"]);
    }

    #[test]
    fn no_tensors() {
        for h in ["{}", "{ }", r#"{"__metadata__":{"format":"pt"}}"#] {
            let p = parse_ok(&file(h, 0));
            assert_eq!(p.rows, 0, "{h}");
            assert!(p.tensors.is_empty() && p.columns.is_empty(), "{h}");
        }
    }

    #[test]
    fn header_padding_and_metadata() {
        let h = format!(r#"{{"__metadata__":{{"a":"1","b":""}},{}}}        "#, entry("x", "I32", "[2]", 0, 8));
        let p = parse_ok(&file(&h, 8));
        assert_eq!(p.rows, 2);
        assert_eq!(p.columns, vec![col("x", DType::I32, 8 + h.len() as u64, 4)]);
        assert_eq!(p.tensors.len(), 1);
    }

    #[test]
    fn whitespace_inside_header() {
        let h = "{\n  \"x\" : { \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 4 ] , \"dtype\" : \"BF16\" }\n}\n";
        let p = parse_ok(&file(h, 4));
        assert_eq!(p.columns, vec![col("x", DType::BF16, 8 + h.len() as u64, 2)]);
    }

    #[test]
    fn every_dtype() {
        for dtype in DType::ALL {
            let size = dtype.size() as u64;
            let h = header(&[
                entry("v", dtype.safetensors_name(), "[3]", 0, 3 * size),
                entry("m", dtype.safetensors_name(), "[3, 2]", 3 * size, 9 * size),
            ]);
            let p = parse_ok(&file(&h, 9 * size as usize));
            let base = 8 + h.len() as u64;
            assert_eq!(p.rows, 3);
            assert_eq!(
                p.columns,
                vec![
                    col("v", dtype, base, size),
                    col("m:0", dtype, base + 3 * size, 2 * size),
                    col("m:1", dtype, base + 4 * size, 2 * size),
                ],
                "{dtype}"
            );
        }
    }

    #[test]
    fn f16_bf16_bool_values() {
        let h = header(&[entry("h", "F16", "[2]", 0, 4), entry("g", "BF16", "[2]", 4, 8), entry("ok", "BOOL", "[2]", 8, 10)]);
        let mut data = Vec::new();
        for v in [1.5f32, -2.0] {
            data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        for v in [0.25f32, 3.0] {
            data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
        data.extend_from_slice(&[1, 0]);
        let bytes = file_with(&h, &data);
        let p = parse_ok(&bytes);
        let f16s: Vec<f32> =
            column_values(&bytes, &p.columns[0], 2).iter().map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert_eq!(f16s, [1.5, -2.0]);
        let bf16s: Vec<f32> =
            column_values(&bytes, &p.columns[1], 2).iter().map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert_eq!(bf16s, [0.25, 3.0]);
        let bools: Vec<u8> = column_values(&bytes, &p.columns[2], 2).iter().map(|b| b[0]).collect();
        assert_eq!(bools, [1, 0]);
        assert_eq!(p.columns[2].dtype, DType::Bool);
    }

    #[test]
    fn unicode_tensor_names() {
        let h = header(&[entry("größe", "U16", "[1, 2]", 0, 4)]);
        let p = parse_ok(&file(&h, 4));
        assert_eq!(p.columns[1].name, "größe:1");
    }

    #[test]
    fn cross_check_with_safetensors_crate() {
        use safetensors::Dtype;
        use safetensors::tensor::TensorView;
        let rows = 5usize;
        let emb: Vec<u8> = (0..rows * 3).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
        let ids: Vec<u8> = (0..rows as i64).flat_map(|i| (i * 100).to_le_bytes()).collect();
        let flags: Vec<u8> = (0..rows).map(|i| (i % 2) as u8).collect();
        let halfs: Vec<u8> = (0..rows).flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes()).collect();
        let tensors = vec![
            ("emb", TensorView::new(Dtype::F32, vec![rows, 3], &emb).unwrap()),
            ("ids", TensorView::new(Dtype::I64, vec![rows], &ids).unwrap()),
            ("flag", TensorView::new(Dtype::BOOL, vec![rows], &flags).unwrap()),
            ("h", TensorView::new(Dtype::F16, vec![rows], &halfs).unwrap()),
        ];
        let metadata = HashMap::from([("source".to_string(), "test".to_string())]);
        let bytes = safetensors::serialize(tensors, Some(metadata)).unwrap();
        let p = parse_ok(&bytes);
        assert_eq!(p.rows, rows as u64);

        let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (header_len, _) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let base = 8 + header_len as u64;
        for t in &p.tensors {
            let view = reference.tensor(&t.name).unwrap();
            let start = (t.offset - base) as usize;
            assert_eq!(&bytes[t.offset as usize..][..t.bytes as usize], view.data());
            assert_eq!(view.data().as_ptr(), bytes[start + base as usize..].as_ptr());
            let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
            assert_eq!(t.shape, shape);
        }
        let by_name: HashMap<&str, &ColumnLayout> = p.columns.iter().map(|c| (c.name.as_str(), c)).collect();
        assert_eq!(by_name.len(), 6);
        let emb1: Vec<f32> =
            column_values(&bytes, by_name["emb:1"], rows as u64).iter().map(|b| f32::from_le_bytes((*b).try_into().unwrap())).collect();
        let want: Vec<f32> = (0..rows).map(|r| (r * 3 + 1) as f32 * 0.5).collect();
        assert_eq!(emb1, want);
        let ids: Vec<i64> =
            column_values(&bytes, by_name["ids"], rows as u64).iter().map(|b| i64::from_le_bytes((*b).try_into().unwrap())).collect();
        assert_eq!(ids, [0, 100, 200, 300, 400]);
        let h: Vec<f32> =
            column_values(&bytes, by_name["h"], rows as u64).iter().map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        assert_eq!(h, [0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    // ---- malformed files ----

    #[test]
    fn empty_and_short_files() {
        assert_err(&[], "empty file");
        assert_err(&[1, 0, 0, 0, 0], "only 5 bytes, too short");
    }

    #[test]
    fn header_length_past_end() {
        let mut bytes = file("{}", 0);
        bytes[0] = 3;
        assert_err(&bytes, "header length 3 runs past the end of the file (2 bytes");
        assert_err(&8u64.to_le_bytes(), "header length 8 runs past the end");
    }

    #[test]
    fn header_length_over_limit() {
        assert_err(&u64::MAX.to_le_bytes(), "exceeds the limit of 100000000 bytes");
        let mut bytes = 100_000_001u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert_err(&bytes, "header length 100000001 exceeds the limit");
    }

    #[test]
    fn empty_header() {
        assert_err(&file("", 0), "header is not a valid JSON object: EOF");
    }

    #[test]
    fn header_not_utf8() {
        let mut bytes = file("{\"x\u{e9}\":{}}", 0);
        // Replace the two-byte é with a lone continuation byte and a space.
        let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
        bytes[at] = 0xa9;
        bytes[at + 1] = b' ';
        assert_err(&bytes, "header is not valid UTF-8 (bad byte at header offset 3)");
    }

    #[test]
    fn header_not_json() {
        assert_err(&file(r#"{"x":"#, 0), "header is not a valid JSON object");
        assert_err(&file("hello", 0), "header is not a valid JSON object");
        assert_err(&file(r#"{"x":{"dtype":"F32",}}"#, 0), "trailing comma");
    }

    #[test]
    fn header_not_an_object() {
        assert_err(&file("[1, 2]", 0), "expected a JSON object mapping tensor names");
        assert_err(&file("\"x\"", 0), "expected a JSON object mapping tensor names");
        assert_err(&file("null", 0), "expected a JSON object mapping tensor names");
    }

    #[test]
    fn trailing_text_after_header_object() {
        assert_err(&file("{} x", 0), "trailing characters");
        assert_err(&file("{}\0\0", 0), "trailing characters");
    }

    #[test]
    fn duplicate_tensor_names() {
        let h = header(&[entry("x", "F32", "[1]", 0, 4), entry("x", "F32", "[1]", 4, 8)]);
        assert_err(&file(&h, 8), "duplicate tensor name `x`");
    }

    #[test]
    fn duplicate_metadata_key() {
        let h = r#"{"__metadata__":{},"__metadata__":{}}"#;
        assert_err(&file(h, 0), "duplicate key `__metadata__`");
        let h = r#"{"__metadata__":{"a":"1","a":"2"}}"#;
        assert_err(&file(h, 0), "duplicate key `a` in `__metadata__`");
    }

    #[test]
    fn duplicate_field() {
        let h = r#"{"x":{"dtype":"F32","shape":[1],"dtype":"F32","data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "tensor `x` has field `dtype` twice");
    }

    #[test]
    fn missing_fields() {
        let h = r#"{"x":{"dtype":"F32","data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "tensor `x` is missing field `shape`");
        let h = r#"{"x":{"shape":[1],"data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "tensor `x` is missing field `dtype`");
        let h = r#"{"x":{"dtype":"F32","shape":[1]}}"#;
        assert_err(&file(h, 4), "tensor `x` is missing field `data_offsets`");
    }

    #[test]
    fn unknown_field() {
        let h = r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"foo":1}}"#;
        assert_err(&file(h, 4), "tensor `x` has unknown field `foo`");
    }

    #[test]
    fn entry_not_an_object() {
        assert_err(&file(r#"{"x":[1]}"#, 0), "expected a JSON object describing tensor `x`");
        assert_err(&file(r#"{"x":"F32"}"#, 0), "describing tensor `x`");
    }

    #[test]
    fn mistyped_dtype() {
        let h = r#"{"x":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "tensor `x`: `dtype` must be a string, found a number");
    }

    #[test]
    fn unsupported_dtypes() {
        for name in ["F8_E4M3", "C64", "f32", "F4", "FLOAT"] {
            let h = header(&[entry("x", name, "[1]", 0, 1)]);
            assert_err(&file(&h, 1), &format!("unsupported dtype {name} for tensor `x`"));
        }
    }

    #[test]
    fn rank_0_and_rank_3() {
        let h = header(&[entry("s", "F32", "[]", 0, 4)]);
        assert_err(&file(&h, 4), "tensor `s` has shape [] (rank 0); tilestream reads only 1-D");
        let h = header(&[entry("t", "F32", "[2, 3, 4]", 0, 96)]);
        assert_err(&file(&h, 96), "tensor `t` has shape [2, 3, 4] (rank 3)");
        let h = header(&[entry("u", "U8", "[1,1,1,1,1,1,1,1,1,1]", 0, 1)]);
        assert_err(&file(&h, 1), "has shape with 10 dimensions (rank 10)");
    }

    #[test]
    fn mistyped_shapes() {
        for (shape, found) in
            [("[-1]", "-1"), ("[1.5]", "1.5"), ("[\"2\"]", "a string"), ("[null]", "null"), ("[18446744073709551616]", "1.8446")]
        {
            let h = header(&[entry("x", "U8", shape, 0, 1)]);
            assert_err(&file(&h, 1), &format!("`shape` must be an array of non-negative integers, found an element that is {found}"));
        }
        let h = header(&[entry("x", "U8", "3", 0, 3)]);
        assert_err(&file(&h, 3), "`shape` must be an array of non-negative integers, found a number");
    }

    #[test]
    fn shape_overflow() {
        let h = header(&[entry("x", "U8", "[4294967296, 4294967296]", 0, 0)]);
        assert_err(&file(&h, 0), "tensor `x`: shape [4294967296, 4294967296] has more elements than fit in 64 bits");
        let h = header(&[entry("x", "F64", "[4611686018427387904]", 0, 0)]);
        assert_err(&file(&h, 0), "takes more bytes than fit in 64 bits");
    }

    #[test]
    fn mistyped_data_offsets() {
        for offsets in ["[0]", "[0, 4, 8]", "[\"0\", 4]", "[0, -4]", "{}", "4", "[0, 4.0]"] {
            let h = format!(r#"{{"x":{{"dtype":"F32","shape":[1],"data_offsets":{offsets}}}}}"#);
            assert_err(&file(&h, 4), "tensor `x`: `data_offsets` must be an array of two non-negative integers");
        }
    }

    #[test]
    fn begin_after_end() {
        let h = header(&[entry("x", "F32", "[1]", 8, 4)]);
        assert_err(&file(&h, 8), "tensor `x`: data_offsets begin 8 is after end 4");
    }

    #[test]
    fn offsets_past_the_buffer() {
        let h = header(&[entry("x", "F32", "[2]", 0, 8)]);
        assert_err(&file(&h, 4), "tensor `x`: data_offsets end 8 is past the end of the 4-byte data buffer");
        let h = header(&[entry("x", "U8", "[0]", u64::MAX, u64::MAX)]);
        assert_err(&file(&h, 0), "past the end of the 0-byte data buffer");
    }

    #[test]
    fn size_mismatch() {
        let h = header(&[entry("x", "F32", "[3, 2]", 0, 20)]);
        assert_err(&file(&h, 20), "tensor `x`: dtype F32 with shape [3, 2] needs 24 bytes but data_offsets [0, 20] span 20");
        let h = header(&[entry("x", "F32", "[3]", 0, 16)]);
        assert_err(&file(&h, 16), "needs 12 bytes");
    }

    #[test]
    fn gap_before_first_tensor() {
        let h = header(&[entry("x", "F32", "[1]", 4, 8)]);
        assert_err(&file(&h, 8), "the first tensor `x` starts at data offset 4");
    }

    #[test]
    fn gap_between_tensors() {
        let h = header(&[entry("a", "F32", "[1]", 0, 4), entry("b", "F32", "[1]", 6, 10)]);
        assert_err(&file(&h, 10), "gap of 2 bytes between tensors `a` and `b`");
    }

    #[test]
    fn overlapping_tensors() {
        let h = header(&[entry("a", "F32", "[2]", 0, 8), entry("b", "F32", "[2]", 4, 12)]);
        assert_err(&file(&h, 12), "tensors `b` and `a` overlap");
        let h = header(&[entry("a", "F32", "[2]", 0, 8), entry("b", "F32", "[2]", 0, 8)]);
        assert_err(&file(&h, 8), "overlap in the data buffer");
        // A zero-sized tensor strictly inside another one.
        let h = header(&[entry("a", "F32", "[2]", 0, 8), entry("e", "F32", "[0]", 4, 4)]);
        assert_err(&file(&h, 8), "tensors `e` and `a` overlap");
    }

    #[test]
    fn trailing_data() {
        let h = header(&[entry("x", "F32", "[1]", 0, 4)]);
        assert_err(&file(&h, 8), "4 bytes of trailing data after the last tensor");
        assert_err(&file("{}", 3), "3 bytes of trailing data after a header that lists no tensors");
    }

    #[test]
    fn different_row_counts() {
        let h = header(&[entry("a", "F32", "[2]", 0, 8), entry("b", "U8", "[3, 1]", 8, 11)]);
        assert_err(&file(&h, 11), "tensors `a` and `b` have different row counts (2 and 3)");
    }

    #[test]
    fn bad_metadata() {
        assert_err(&file(r#"{"__metadata__":{"a":1}}"#, 0), "`__metadata__` value for `a` must be a string, found a number");
        assert_err(&file(r#"{"__metadata__":"x"}"#, 0), "expected a JSON object of strings for `__metadata__`");
    }

    #[test]
    fn empty_tensor_name() {
        let h = header(&[entry("", "F32", "[1]", 0, 4)]);
        assert_err(&file(&h, 4), "empty tensor name");
    }

    #[test]
    fn clashing_column_names() {
        let h = header(&[entry("a", "F32", "[1, 2]", 0, 8), entry("a:1", "F32", "[1]", 8, 12)]);
        assert_err(&file(&h, 12), "column name `a:1` is produced by both tensor `a` and tensor `a:1`");
    }

    #[test]
    fn too_many_columns() {
        // Zero rows make the byte size 0 whatever k is, so k itself must be bounded.
        let h = header(&[entry("x", "F32", "[0, 1000000000000]", 0, 0)]);
        assert_err(&file(&h, 0), "tensor `x` has 1000000000000 columns; at most 1048576");
        let h = header(&[entry("x", "F32", "[0, 1000000]", 0, 0), entry("y", "F32", "[0, 1000000]", 0, 0)]);
        assert_err(&file(&h, 0), "more than 1048576 columns in all");
    }

    #[test]
    fn control_characters_are_escaped() {
        let h = r#"{"a\nb":{"dtype":"X\tY","shape":[1],"data_offsets":[0,1]}}"#;
        assert_err(&file(h, 1), "unsupported dtype X\\tY for tensor `a\\nb`");
        let long = "n".repeat(500);
        let h = header(&[entry(&long, "F32", "[1]", 0, 3)]);
        let message = assert_err(&file(&h, 3), "needs 4 bytes");
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn nesting_bombs_do_not_overflow_the_stack() {
        let deep = "[".repeat(100_000);
        assert_err(&file(&deep, 0), "expected a JSON object mapping tensor names");
        let h = format!(r#"{{"x":{{"dtype":{deep}"#);
        assert_err(&file(&h, 0), "recursion limit exceeded");
        let h = format!(r#"{{"x":{{"shape":{}"#, "{\"a\":".repeat(100_000));
        assert_err(&file(&h, 0), "recursion limit exceeded");
        let h = format!(r#"{{"__metadata__":{{"a":{deep}"#);
        assert_err(&file(&h, 0), "recursion limit exceeded");
    }

    #[test]
    fn mutated_and_truncated_files_never_panic() {
        let h = header(&[entry("a", "F32", "[2, 2]", 0, 16), entry("b", "U8", "[2]", 16, 18)]);
        let valid = file(&h, 18);
        for len in 0..valid.len() {
            assert!(parse_safetensors(Path::new(PATH), &valid[..len]).is_err(), "prefix of {len} bytes");
        }
        for at in 0..valid.len() {
            for byte in [0, 0xff, b'[', b'{', b'"', b'9', b'-', b' ', b','] {
                let mut bytes = valid.clone();
                bytes[at] = byte;
                let _ = parse_safetensors(Path::new(PATH), &bytes);
            }
        }
    }
}
