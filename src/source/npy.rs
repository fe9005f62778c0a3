//! Parser for `.npy` files: the magic, the version, and the Python dict literal of the header.
//!
//! Layout: `\x93NUMPY`, major and minor version bytes, the header length (u16 little-endian for
//! version 1, u32 for versions 2 and 3), the header text such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (100, 8), }`, then the array data.

use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::parsed::{ColumnLayout, ParsedFile, TensorInfo};
use crate::source::parsed::{escape, show};

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Most columns one file may produce; bounds the memory spent on layouts whatever the header says.
const MAX_COLUMNS: u64 = 1 << 20;

/// Deepest nesting of tuples and lists the header parser follows.
const MAX_DEPTH: usize = 16;

/// Parses and validates a whole `.npy` file held in `bytes`.
///
/// The array must be 1-D `(N,)`, giving one column named `stem`, or 2-D `(N, F)`, giving
/// columns `stem:0` .. `stem:{F-1}` (C or Fortran order). The data after the header must be
/// exactly the array's size. The one tensor is named `stem`.
pub fn parse_npy(path: &Path, stem: &str, bytes: &[u8]) -> Result<ParsedFile> {
    parse(stem, bytes).map_err(|message| Error::format(path, message))
}

/// The three keys of a validated header.
struct Header {
    dtype: DType,
    fortran_order: bool,
    shape: Vec<u64>,
}

fn parse(stem: &str, bytes: &[u8]) -> Result<ParsedFile, String> {
    if bytes.len() < MAGIC.len() + 2 || !bytes.starts_with(MAGIC) {
        if MAGIC.starts_with(bytes) || bytes.starts_with(MAGIC) {
            return Err(format!("file is only {} bytes, too short for an npy header", bytes.len()));
        }
        return Err("not an npy file: it does not start with the \\x93NUMPY magic".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let length_size = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(format!("unsupported npy format version {major}.{minor} (versions 1, 2 and 3 are supported)"));
        }
    };
    let header_start = 8 + length_size;
    let Some(length_bytes) = bytes.get(8..header_start) else {
        return Err(format!("file is only {} bytes, too short for the npy header length", bytes.len()));
    };
    // Little-endian u16 (version 1) or u32 (versions 2 and 3): at most 32 bits, so it fits
    // in usize on every supported target.
    let header_len = length_bytes.iter().rev().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let available = bytes.len() - header_start;
    if header_len > available {
        return Err(format!(
            "header length {header_len} runs past the end of the file \
             ({available} bytes follow the length field)"
        ));
    }
    let data_start = header_start + header_len;
    let raw_header = &bytes[header_start..data_start];
    let non_ascii = if major < 3 { raw_header.iter().position(|b| !b.is_ascii()) } else { None };
    if let Some(pos) = non_ascii {
        return Err(format!(
            "non-ASCII byte 0x{:02x} at header offset {pos} in a version {major}.{minor} header \
             (only version 3 headers may use UTF-8)",
            raw_header[pos]
        ));
    }
    let text = std::str::from_utf8(raw_header)
        .map_err(|e| format!("header is not valid UTF-8 (bad byte at header offset {})", e.valid_up_to()))?;
    let header = parse_header(text)?;

    let shape = &header.shape;
    if shape.is_empty() || shape.len() > 2 {
        let what = if shape.is_empty() { "a 0-d scalar".to_string() } else { format!("rank {}", shape.len()) };
        return Err(format!(
            "npy array has shape {} ({what}); tilestream reads only 1-D arrays and 2-D (N, F) arrays",
            format_shape(shape)
        ));
    }
    let size = header.dtype.size() as u64;
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {} has more elements than fit in 64 bits", format_shape(shape)))?;
    let nbytes = elements
        .checked_mul(size)
        .ok_or_else(|| format!("shape {} of {} takes more bytes than fit in 64 bits", format_shape(shape), header.dtype))?;
    // usize -> u64 is lossless on every supported (at most 64-bit) target.
    let data_len = (bytes.len() - data_start) as u64;
    if data_len < nbytes {
        return Err(format!("truncated: header says {nbytes} bytes of data, file has {data_len}"));
    }
    if data_len > nbytes {
        return Err(format!("{} bytes of trailing data: header says {nbytes} bytes of data, file has {data_len}", data_len - nbytes));
    }

    let rows = shape[0];
    let base = data_start as u64;
    let dtype = header.dtype;
    let columns = match shape[..] {
        [_, f] => {
            if f > MAX_COLUMNS {
                return Err(format!("npy array has {f} columns; at most {MAX_COLUMNS} are supported"));
            }
            (0..f)
                .map(|j| {
                    // No overflow: every offset lies inside the nbytes checked above.
                    let (offset, stride) = if header.fortran_order { (base + j * rows * size, size) } else { (base + j * size, f * size) };
                    ColumnLayout { name: format!("{stem}:{j}"), dtype, offset, stride }
                })
                .collect()
        }
        _ => vec![ColumnLayout { name: stem.to_string(), dtype, offset: base, stride: size }],
    };
    Ok(ParsedFile {
        format: "npy",
        rows,
        tensors: vec![TensorInfo { name: stem.to_string(), dtype, shape: header.shape, offset: base, bytes: nbytes }],
        columns,
    })
}

/// Parses the header dict and checks its three keys.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut parser = Parser { text, pos: 0, depth: 0 };
    let entries = parser.dict().map_err(|(pos, msg)| format!("bad npy header: {msg} at header offset {pos}"))?;

    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    for (key, value) in entries {
        let PyValue::Str(key) = key else {
            return Err(format!("bad npy header: keys must be strings, found {}", value_kind(&key)));
        };
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran_order,
            "shape" => &mut shape,
            _ => {
                return Err(format!("bad npy header: unexpected key {} (expected descr, fortran_order, shape)", show(&key)));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("bad npy header: duplicate key {}", show(&key)));
        }
    }
    let missing = |key: &str| format!("bad npy header: missing key `{key}`");
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran_order = fortran_order.ok_or_else(|| missing("fortran_order"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;

    let dtype = match descr {
        PyValue::Str(d) => parse_descr(&d)?,
        PyValue::List(_) => {
            return Err("structured dtype (descr is a list of fields) is not supported; \
                 save each field as its own .npy file"
                .into());
        }
        other => {
            return Err(format!("bad npy header: `descr` must be a string, found {}", value_kind(&other)));
        }
    };
    let PyValue::Bool(fortran_order) = fortran_order else {
        return Err(format!("bad npy header: `fortran_order` must be True or False, found {}", value_kind(&fortran_order)));
    };
    let bad_shape =
        |found: &PyValue| format!("bad npy header: `shape` must be a tuple of non-negative integers, found {}", value_kind(found));
    let PyValue::Tuple(dims) = shape else {
        return Err(bad_shape(&shape));
    };
    let shape = dims
        .iter()
        .map(|d| match d {
            PyValue::Int(n) => Ok(*n),
            other => Err(bad_shape(other)),
        })
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(Header { dtype, fortran_order, shape })
}

/// Maps a numpy `descr` string to a dtype (little-endian or byte-order-free only).
fn parse_descr(descr: &str) -> Result<DType, String> {
    let (order, code) = match descr.as_bytes().first() {
        // The first byte is ASCII, so slicing after it stays on a char boundary.
        Some(&b @ (b'<' | b'>' | b'=' | b'|')) => (Some(b), &descr[1..]),
        _ => (None, descr),
    };
    let dtype = match code {
        "f2" => DType::F16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "i8" => DType::I64,
        "u8" => DType::U64,
        _ => return Err(unsupported_descr(descr, code)),
    };
    if dtype.size() > 1 {
        match order {
            Some(b'>') => {
                return Err(format!(
                    "big-endian dtype {descr} is not supported; convert with numpy: \
                     a.astype('<{code}')"
                ));
            }
            Some(b'|') => {
                return Err(format!(
                    "npy dtype {descr} is multi-byte but has no byte order (`|`); \
                     expected <{code}"
                ));
            }
            _ => {}
        }
    }
    Ok(dtype)
}

/// The message for a descr string that names no supported dtype.
fn unsupported_descr(descr: &str, code: &str) -> String {
    let shown = escape(descr);
    let what = match code.as_bytes().first() {
        Some(b'O') => "object arrays",
        Some(b'S' | b'U' | b'a') => "string arrays",
        Some(b'V') => "void (raw or structured) arrays",
        Some(b'c') => "complex arrays",
        Some(b'M' | b'm') => "datetime and timedelta arrays",
        _ => {
            return format!(
                "unsupported npy dtype {shown} (supported: f2 f4 f8 i1 u1 b1 i2 u2 i4 u4 i8 u8, \
                 little-endian)"
            );
        }
    };
    format!("{what} (dtype {shown}) are not supported; tilestream reads numeric arrays")
}

/// A Python literal value as found in npy headers.
#[derive(Debug, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<PyValue>),
    List(Vec<PyValue>),
}

/// A value's kind, for messages.
fn value_kind(v: &PyValue) -> &'static str {
    match v {
        PyValue::Str(_) => "a string",
        PyValue::Bool(_) => "a boolean",
        PyValue::Int(_) => "an integer",
        PyValue::Tuple(_) => "a tuple",
        PyValue::List(_) => "a list",
    }
}

/// A parse failure: header byte offset and message.
type ParseError = (usize, String);

/// A strict recursive-descent parser for the header's dict literal.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err((self.pos, message.into()))
    }

    fn unexpected<T>(&self, wanted: &str) -> Result<T, ParseError> {
        match self.text.get(self.pos..).and_then(|rest| rest.chars().next()) {
            None => self.fail(format!("unexpected end of header, expected {wanted}")),
            Some(c) => self.fail(format!("unexpected `{}`, expected {wanted}", c.escape_default())),
        }
    }

    /// The whole header: one dict, then only whitespace.
    fn dict(&mut self) -> Result<Vec<(PyValue, PyValue)>, ParseError> {
        self.skip_whitespace();
        if self.peek() != Some(b'{') {
            return self.unexpected("`{`");
        }
        self.pos += 1;
        let mut entries = Vec::new();
        loop {
            self.skip_whitespace();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key = self.value()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return self.unexpected("`:`");
            }
            self.pos += 1;
            let value = self.value()?;
            entries.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return self.unexpected("`,` or `}`"),
            }
        }
        self.skip_whitespace();
        if self.pos != self.text.len() {
            return self.fail("unexpected text after the header dict");
        }
        Ok(entries)
    }

    fn value(&mut self) -> Result<PyValue, ParseError> {
        self.skip_whitespace();
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => self.sequence(b')'),
            Some(b'[') => self.sequence(b']'),
            Some(b'0'..=b'9') => self.integer(),
            Some(b'-') => self.fail("negative numbers are not allowed"),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => self.name(),
            _ => self.unexpected("a value"),
        }
    }

    fn string(&mut self, quote: u8) -> Result<PyValue, ParseError> {
        let start = self.pos + 1;
        let rest = &self.text.as_bytes()[start..];
        for (i, &b) in rest.iter().enumerate() {
            if b == quote {
                self.pos = start + i + 1;
                // Both ends are at ASCII bytes, hence at char boundaries.
                return Ok(PyValue::Str(self.text[start..start + i].to_string()));
            }
            if b == b'\\' || b == b'\n' || b == b'\r' {
                self.pos = start + i;
                return self.fail("escape sequences and line breaks in strings are not supported");
            }
        }
        self.fail("unterminated string")
    }

    fn integer(&mut self) -> Result<PyValue, ParseError> {
        let start = self.pos;
        let mut n: u64 = 0;
        while let Some(b @ b'0'..=b'9') = self.peek() {
            n = match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0'))) {
                Some(n) => n,
                None => {
                    self.pos = start;
                    return self.fail("integer does not fit in 64 bits");
                }
            };
            self.pos += 1;
        }
        // Python 2 wrote long integers with an `L` suffix; numpy still reads them.
        if self.peek() == Some(b'L') {
            self.pos += 1;
        }
        if let Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'.') = self.peek() {
            return self.unexpected("an integer");
        }
        Ok(PyValue::Int(n))
    }

    fn name(&mut self) -> Result<PyValue, ParseError> {
        let start = self.pos;
        while let Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_') = self.peek() {
            self.pos += 1;
        }
        match &self.text[start..self.pos] {
            "True" => Ok(PyValue::Bool(true)),
            "False" => Ok(PyValue::Bool(false)),
            other => {
                let message = format!("unexpected name {}", show(other));
                self.pos = start;
                self.fail(message)
            }
        }
    }

    /// A tuple `( ... )` or list `[ ... ]`; `(x)` without a comma is just `x`, as in Python.
    fn sequence(&mut self, close: u8) -> Result<PyValue, ParseError> {
        if self.depth == MAX_DEPTH {
            return self.fail("tuples or lists nested too deeply");
        }
        self.depth += 1;
        self.pos += 1;
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            self.skip_whitespace();
            if self.peek() == Some(close) {
                self.pos += 1;
                break;
            }
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    comma = true;
                }
                Some(c) if c == close => {
                    self.pos += 1;
                    break;
                }
                _ => {
                    return self.unexpected(if close == b')' { "`,` or `)`" } else { "`,` or `]`" });
                }
            }
        }
        self.depth -= 1;
        Ok(match close {
            b']' => PyValue::List(items),
            _ if items.len() == 1 && !comma => items.remove(0),
            _ => PyValue::Tuple(items),
        })
    }
}

/// `(a, b)` in Python notation, or just the rank when the shape is too long to print usefully.
fn format_shape(shape: &[u64]) -> String {
    match shape {
        [] => "()".into(),
        [n] => format!("({n},)"),
        _ if shape.len() > 8 => format!("with {} dimensions", shape.len()),
        _ => {
            let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "dir/arr.npy";
    /// Where the data starts for the short headers of these tests (numpy pads to 64 bytes).
    const D: u64 = 128;

    /// An npy file as numpy writes it: header padded with spaces and a newline so that the
    /// data starts at a multiple of 64.
    fn npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let prelude = if major == 1 { 10 } else { 12 };
        let mut text = header.to_string();
        while !(prelude + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        npy_raw(major, 0, text.as_bytes(), data)
    }

    /// An npy file with the header bytes exactly as given.
    fn npy_raw(major: u8, minor: u8, header: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, minor]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header);
        out.extend_from_slice(data);
        out
    }

    fn dict(descr: &str, fortran: bool, shape: &str) -> String {
        let fortran = if fortran { "True" } else { "False" };
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
    }

    fn parse_ok(bytes: &[u8]) -> ParsedFile {
        match parse_npy(Path::new(PATH), "arr", bytes) {
            Ok(parsed) => parsed,
            Err(e) => panic!("expected a valid file, got: {e}"),
        }
    }

    /// Asserts an error whose one-line message contains `needle`; returns the message.
    fn assert_err(bytes: &[u8], needle: &str) -> String {
        match parse_npy(Path::new(PATH), "arr", bytes) {
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

    /// A header error for a file whose data would otherwise fit.
    fn header_err(header: &str, needle: &str) -> String {
        assert_err(&npy(1, header, &[0; 4]), needle)
    }

    fn col(name: &str, dtype: DType, offset: u64, stride: u64) -> ColumnLayout {
        ColumnLayout { name: name.into(), dtype, offset, stride }
    }

    fn read_f32(bytes: &[u8], c: &ColumnLayout, rows: u64) -> Vec<f32> {
        (0..rows)
            .map(|r| {
                let at = (c.offset + r * c.stride) as usize;
                f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
            })
            .collect()
    }

    // ---- valid files ----

    #[test]
    fn one_dimensional_v1() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = npy(1, &dict("<f4", false, "(5,)"), &data);
        let p = parse_ok(&bytes);
        assert_eq!(p.format, "npy");
        assert_eq!(p.rows, 5);
        assert_eq!(p.columns, vec![col("arr", DType::F32, D, 4)]);
        assert_eq!(p.tensors, vec![TensorInfo { name: "arr".into(), dtype: DType::F32, shape: vec![5], offset: D, bytes: 20 }]);
        assert_eq!(read_f32(&bytes, &p.columns[0], 5), [1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn two_dimensional_c_order() {
        // 3 rows x 2 columns, row-major: [[0, 1], [2, 3], [4, 5]].
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bytes = npy(1, &dict("<f4", false, "(3, 2)"), &data);
        let p = parse_ok(&bytes);
        assert_eq!(p.rows, 3);
        assert_eq!(p.columns, vec![col("arr:0", DType::F32, D, 8), col("arr:1", DType::F32, D + 4, 8)]);
        assert_eq!(read_f32(&bytes, &p.columns[0], 3), [0.0, 2.0, 4.0]);
        assert_eq!(read_f32(&bytes, &p.columns[1], 3), [1.0, 3.0, 5.0]);
        assert_eq!(p.tensors[0].shape, vec![3, 2]);
        assert_eq!(p.tensors[0].bytes, 24);
    }

    #[test]
    fn two_dimensional_fortran_order() {
        // 3 rows x 2 columns, column-major: column 0 = [0, 1, 2], column 1 = [3, 4, 5].
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bytes = npy(1, &dict("<f4", true, "(3, 2)"), &data);
        let p = parse_ok(&bytes);
        assert_eq!(p.columns, vec![col("arr:0", DType::F32, D, 4), col("arr:1", DType::F32, D + 12, 4)]);
        assert_eq!(read_f32(&bytes, &p.columns[0], 3), [0.0, 1.0, 2.0]);
        assert_eq!(read_f32(&bytes, &p.columns[1], 3), [3.0, 4.0, 5.0]);
    }

    #[test]
    fn file_as_numpy_writes_it() {
        // np.save(f, np.arange(6, dtype='<f4').reshape(3, 2)): a 118-byte version 1.0 header.
        let mut bytes = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }".to_vec();
        bytes.resize(127, b' ');
        bytes.push(b'\n');
        bytes.extend((0..6).flat_map(|i| (i as f32).to_le_bytes()));
        assert_eq!(bytes, npy(1, &dict("<f4", false, "(3, 2)"), &bytes[128..]));
        let p = parse_ok(&bytes);
        assert_eq!(p.rows, 3);
        assert_eq!(read_f32(&bytes, &p.columns[1], 3), [1.0, 3.0, 5.0]);
    }

    #[test]
    fn fortran_order_one_dimensional() {
        let bytes = npy(1, &dict("<i8", true, "(2,)"), &[0; 16]);
        assert_eq!(parse_ok(&bytes).columns, vec![col("arr", DType::I64, D, 8)]);
    }

    #[test]
    fn versions_2_and_3() {
        for major in [2, 3] {
            let bytes = npy(major, &dict("<u2", false, "(4, 3)"), &[0; 24]);
            let p = parse_ok(&bytes);
            assert_eq!(p.rows, 4);
            assert_eq!(p.columns[2], col("arr:2", DType::U16, D + 4, 6), "v{major}");
        }
        // Any minor version is accepted.
        let header = dict("<u2", false, "(1,)");
        let bytes = npy_raw(3, 7, header.as_bytes(), &[0; 2]);
        assert_eq!(parse_ok(&bytes).columns[0].offset, 12 + header.len() as u64);
    }

    #[test]
    fn zero_rows_and_zero_columns() {
        let p = parse_ok(&npy(1, &dict("<f8", false, "(0,)"), &[]));
        assert_eq!((p.rows, p.columns.len()), (0, 1));
        let p = parse_ok(&npy(1, &dict("<f8", false, "(0, 3)"), &[]));
        assert_eq!(p.rows, 0);
        assert_eq!(p.columns[2], col("arr:2", DType::F64, D + 16, 24));
        let p = parse_ok(&npy(1, &dict("<f8", true, "(0, 3)"), &[]));
        assert_eq!(p.columns[2], col("arr:2", DType::F64, D, 8));
        let p = parse_ok(&npy(1, &dict("<f8", false, "(4, 0)"), &[]));
        assert_eq!((p.rows, p.columns.len()), (4, 0));
    }

    #[test]
    fn every_descr() {
        let cases = [
            ("<f2", DType::F16),
            ("=f2", DType::F16),
            ("<f4", DType::F32),
            ("=f4", DType::F32),
            ("f4", DType::F32),
            ("<f8", DType::F64),
            ("|i1", DType::I8),
            ("<i1", DType::I8),
            ("i1", DType::I8),
            ("|u1", DType::U8),
            ("=u1", DType::U8),
            (">u1", DType::U8),
            ("|b1", DType::Bool),
            ("<b1", DType::Bool),
            ("<i2", DType::I16),
            ("<u2", DType::U16),
            ("<i4", DType::I32),
            ("=i4", DType::I32),
            ("<u4", DType::U32),
            ("<i8", DType::I64),
            ("<u8", DType::U64),
        ];
        for (descr, dtype) in cases {
            let size = dtype.size() as u64;
            let bytes = npy(1, &dict(descr, false, "(3, 2)"), &vec![0; 6 * size as usize]);
            let p = parse_ok(&bytes);
            assert_eq!(p.columns, vec![col("arr:0", dtype, D, 2 * size), col("arr:1", dtype, D + size, 2 * size)], "{descr}");
        }
        // The descr numpy writes for each dtype is accepted.
        for dtype in DType::ALL {
            if let Some(descr) = dtype.npy_descr() {
                let bytes = npy(1, &dict(descr, false, "(1,)"), &vec![0; dtype.size()]);
                assert_eq!(parse_ok(&bytes).columns[0].dtype, dtype);
            }
        }
    }

    #[test]
    fn f16_and_bool_values() {
        let data: Vec<u8> = [0.5f32, -1.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let bytes = npy(1, &dict("<f2", false, "(2,)"), &data);
        let p = parse_ok(&bytes);
        let c = &p.columns[0];
        let values: Vec<f32> = (0..2)
            .map(|r| {
                let at = (c.offset + r * c.stride) as usize;
                half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
            })
            .collect();
        assert_eq!(values, [0.5, -1.0]);

        let bytes = npy(1, &dict("|b1", false, "(2, 2)"), &[1, 0, 0, 1]);
        let p = parse_ok(&bytes);
        assert_eq!(p.columns[1], col("arr:1", DType::Bool, D + 1, 2));
    }

    #[test]
    fn header_spellings() {
        let headers = [
            r#"{"descr": "<f4", "fortran_order": False, "shape": (2,)}"#,
            "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}",
            "{'descr':'<f4','fortran_order':False,'shape':(2,),}",
            "{\n 'descr' : '<f4' ,\n\t'fortran_order' : False ,\r\n 'shape' : ( 2 , ) , }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }",
            "  {'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        ];
        for h in headers {
            let p = parse_ok(&npy(1, h, &[0; 8]));
            assert_eq!(p.rows, 2, "{h}");
        }
        // No padding at all: data right after the header.
        let bytes = npy_raw(1, 0, dict("<f4", false, "(2,)").as_bytes(), &[0; 8]);
        let header_len = dict("<f4", false, "(2,)").len() as u64;
        assert_eq!(parse_ok(&bytes).columns[0].offset, 10 + header_len);
        // A 2-D shape without a trailing comma, and one with it.
        for shape in ["(2, 1)", "(2, 1,)", "((2), 1)"] {
            let p = parse_ok(&npy(1, &dict("<f4", false, shape), &[0; 8]));
            assert_eq!(p.tensors[0].shape, vec![2, 1], "{shape}");
        }
    }

    #[test]
    fn stem_names_columns() {
        let p = parse_npy(Path::new("x.npy"), "feat", &npy(1, &dict("<f4", false, "(1, 2)"), &[0; 8])).unwrap();
        let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["feat:0", "feat:1"]);
        assert_eq!(p.tensors[0].name, "feat");
    }

    // ---- malformed files ----

    #[test]
    fn empty_and_short_files() {
        assert_err(&[], "file is only 0 bytes, too short for an npy header");
        assert_err(b"\x93NUMP", "file is only 5 bytes, too short");
        assert_err(b"\x93NUMPY\x01", "file is only 7 bytes, too short");
    }

    #[test]
    fn bad_magic() {
        let mut bytes = npy(1, &dict("<f4", false, "(1,)"), &[0; 4]);
        bytes[1] = b'n';
        assert_err(&bytes, "not an npy file: it does not start with the \\x93NUMPY magic");
        assert_err(b"PK\x03\x04", "not an npy file");
    }

    #[test]
    fn bad_version() {
        for major in [0, 4, 255] {
            let bytes = npy_raw(major, 1, b"{}", &[]);
            assert_err(&bytes, &format!("unsupported npy format version {major}.1"));
        }
    }

    #[test]
    fn truncated_length_field() {
        assert_err(b"\x93NUMPY\x01\x00\x05", "file is only 9 bytes, too short for the npy header length");
        assert_err(b"\x93NUMPY\x02\x00\x05\x00\x00", "file is only 11 bytes, too short for the npy header length");
    }

    #[test]
    fn header_length_past_end() {
        let mut bytes = npy_raw(1, 0, b"{}", &[]);
        bytes[8] = 200;
        assert_err(&bytes, "header length 200 runs past the end of the file (2 bytes follow");
        let mut bytes = npy_raw(2, 0, b"{}", &[]);
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_err(&bytes, "header length 4294967295 runs past the end");
    }

    #[test]
    fn non_ascii_header_v1_v2() {
        for major in [1, 2] {
            let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'é': 1}";
            let bytes = npy(major, h, &[0; 4]);
            assert_err(&bytes, &format!("non-ASCII byte 0xc3 at header offset 57 in a version {major}.0 header"));
        }
        // Version 3 allows UTF-8, so the same header fails later, on the unexpected key.
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'é': 1}";
        assert_err(&npy(3, h, &[0; 4]), "unexpected key `é`");
    }

    #[test]
    fn invalid_utf8_header_v3() {
        let mut header = dict("<f4", false, "(1,)").into_bytes();
        header.push(0xff);
        assert_err(&npy_raw(3, 0, &header, &[0; 4]), "header is not valid UTF-8 (bad byte at header offset");
    }

    #[test]
    fn not_a_dict() {
        header_err("[1, 2]", "bad npy header: unexpected `[`, expected `{` at header offset 0");
        header_err("", "unexpected end of header, expected `{`");
        header_err("{'descr': '<f4'", "unexpected end of header, expected `,` or `}`");
        header_err("{'descr' '<f4'}", "expected `:`");
        header_err("{'descr': '<f4' 'shape': (1,)}", "expected `,` or `}`");
        header_err("{'descr': '<f4',, }", "unexpected `,`, expected a value");
    }

    #[test]
    fn text_after_dict() {
        header_err(&format!("{} x", dict("<f4", false, "(1,)")), "unexpected text after the header dict");
        header_err(&format!("{}{{}}", dict("<f4", false, "(1,)")), "unexpected text after the header dict");
    }

    #[test]
    fn missing_keys() {
        header_err("{'descr': '<f4', 'fortran_order': False}", "bad npy header: missing key `shape`");
        header_err("{'descr': '<f4', 'shape': (1,)}", "missing key `fortran_order`");
        header_err("{'fortran_order': False, 'shape': (1,)}", "missing key `descr`");
        header_err("{}", "missing key `descr`");
    }

    #[test]
    fn extra_and_duplicate_keys() {
        header_err(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
            "unexpected key `extra` (expected descr, fortran_order, shape)",
        );
        header_err("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "duplicate key `descr`");
        header_err("{1: '<f4'}", "keys must be strings, found an integer");
    }

    #[test]
    fn big_endian() {
        header_err(&dict(">f4", false, "(1,)"), "big-endian dtype >f4 is not supported; convert with numpy: a.astype('<f4')");
        header_err(&dict(">i8", false, "(1,)"), "big-endian dtype >i8 is not supported; convert with numpy: a.astype('<i8')");
        header_err(&dict(">f2", false, "(1,)"), "a.astype('<f2')");
    }

    #[test]
    fn multi_byte_without_byte_order() {
        header_err(&dict("|f4", false, "(1,)"), "npy dtype |f4 is multi-byte but has no byte order");
    }

    #[test]
    fn unsupported_descrs() {
        for (descr, needle) in [
            ("|O", "object arrays (dtype |O) are not supported"),
            ("O", "object arrays (dtype O)"),
            ("<U10", "string arrays (dtype <U10) are not supported"),
            ("|S5", "string arrays (dtype |S5)"),
            ("|V8", "void (raw or structured) arrays (dtype |V8)"),
            ("<c8", "complex arrays (dtype <c8)"),
            ("<M8[ns]", "datetime and timedelta arrays (dtype <M8[ns])"),
            ("<f16", "unsupported npy dtype <f16 (supported:"),
            ("<i3", "unsupported npy dtype <i3"),
            ("", "unsupported npy dtype  (supported"),
        ] {
            header_err(&dict(descr, false, "(1,)"), needle);
        }
    }

    #[test]
    fn structured_descr() {
        header_err(
            "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,)}",
            "structured dtype (descr is a list of fields) is not supported",
        );
        header_err("{'descr': 4, 'fortran_order': False, 'shape': (1,)}", "`descr` must be a string, found an integer");
    }

    #[test]
    fn bad_fortran_order() {
        header_err("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "`fortran_order` must be True or False, found an integer");
        header_err("{'descr': '<f4', 'fortran_order': 'False', 'shape': (1,)}", "found a string");
        header_err("{'descr': '<f4', 'fortran_order': false, 'shape': (1,)}", "unexpected name `false`");
        header_err("{'descr': '<f4', 'fortran_order': None, 'shape': (1,)}", "unexpected name `None`");
    }

    #[test]
    fn bad_shapes() {
        header_err(&dict("<f4", false, "(1)"), "`shape` must be a tuple of non-negative integers, found an integer");
        header_err(&dict("<f4", false, "[1]"), "`shape` must be a tuple of non-negative integers, found a list");
        header_err(&dict("<f4", false, "('1',)"), "found a string");
        header_err(&dict("<f4", false, "(1.5,)"), "unexpected `.`, expected an integer");
        header_err(&dict("<f4", false, "(-1,)"), "negative numbers are not allowed");
        header_err(&dict("<f4", false, "(18446744073709551616,)"), "integer does not fit in 64 bits");
        header_err(&dict("<f4", false, "(1, 2"), "unexpected `}`, expected a value");
        header_err(&dict("<f4", false, "(1 2)"), "expected `,` or `)`");
    }

    #[test]
    fn bad_ranks() {
        header_err(
            &dict("<f4", false, "()"),
            "npy array has shape () (a 0-d scalar); tilestream reads only 1-D arrays and 2-D (N, F) arrays",
        );
        header_err(&dict("<f4", false, "(1, 1, 1)"), "npy array has shape (1, 1, 1) (rank 3)");
    }

    #[test]
    fn shape_overflow() {
        header_err(&dict("<f4", false, "(4294967296, 4294967296)"), "shape (4294967296, 4294967296) has more elements than fit in 64 bits");
        header_err(
            &dict("<f8", false, "(4611686018427387904,)"),
            "shape (4611686018427387904,) of f64 takes more bytes than fit in 64 bits",
        );
    }

    #[test]
    fn too_many_columns() {
        assert_err(&npy(1, &dict("<f4", false, "(0, 1000000000000)"), &[]), "npy array has 1000000000000 columns; at most 1048576");
    }

    #[test]
    fn truncated_data() {
        let bytes = npy(1, &dict("<f4", false, "(5,)"), &[0; 16]);
        assert_err(&bytes, "truncated: header says 20 bytes of data, file has 16");
        let bytes = npy(2, &dict("<f8", true, "(2, 2)"), &[]);
        assert_err(&bytes, "truncated: header says 32 bytes of data, file has 0");
    }

    #[test]
    fn trailing_data() {
        let bytes = npy(1, &dict("<f4", false, "(5,)"), &[0; 21]);
        assert_err(&bytes, "1 bytes of trailing data: header says 20 bytes of data, file has 21");
    }

    #[test]
    fn bad_strings() {
        header_err("{'descr: '<f4'}", "expected `:`");
        assert_err(&npy_raw(1, 0, b"{'descr': '<f4", &[]), "unterminated string");
        header_err(
            "{'descr': '<f\\x34', 'fortran_order': False, 'shape': (1,)}",
            "escape sequences and line breaks in strings are not supported",
        );
        header_err("{'descr': u'<f4', 'fortran_order': False, 'shape': (1,)}", "unexpected name `u`");
    }

    #[test]
    fn nesting_bomb_does_not_overflow_the_stack() {
        let deep = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}", "(".repeat(100_000));
        assert_err(&npy(2, &deep, &[]), "tuples or lists nested too deeply");
        let deep = format!("{{'descr': {}", "[".repeat(100_000));
        assert_err(&npy(2, &deep, &[]), "tuples or lists nested too deeply");
    }

    #[test]
    fn mutated_and_truncated_files_never_panic() {
        let valid = npy(1, &dict("<i2", true, "(3, 2)"), &[0; 12]);
        for len in 0..valid.len() {
            assert!(parse_npy(Path::new(PATH), "arr", &valid[..len]).is_err(), "prefix of {len} bytes");
        }
        for at in 0..valid.len() {
            for byte in [0, 0x80, 0xff, b'(', b'[', b'{', b'\'', b'"', b'9', b'-', b' ', b',', b')'] {
                let mut bytes = valid.clone();
                bytes[at] = byte;
                let _ = parse_npy(Path::new(PATH), "arr", &bytes);
            }
        }
    }
}
