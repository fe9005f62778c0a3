//! Layout of raw binary files: row-major values of one dtype, no header.

use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::source::parsed::{ColumnLayout, ParsedFile, TensorInfo};

/// Most columns one file may produce; bounds the memory spent on layouts.
const MAX_COLUMNS: u64 = 1 << 20;

/// Describes a headerless row-major file of `file_len` bytes holding `cols` values of `dtype`
/// per row.
///
/// Columns are always named `stem:j` (also when `cols` is 1). The file length must be a whole
/// number of rows. The one tensor is named `stem` with shape `[rows, cols]`.
pub fn parse_raw(path: &Path, stem: &str, file_len: u64, dtype: DType, cols: u64) -> Result<ParsedFile> {
    if cols == 0 {
        return Err(Error::format(path, "raw files need at least 1 column (cols is 0)"));
    }
    if cols > MAX_COLUMNS {
        return Err(Error::format(path, format!("raw files may have at most {MAX_COLUMNS} columns, asked for {cols}")));
    }
    let size = dtype.size() as u64;
    // No overflow: cols <= MAX_COLUMNS and size <= 8.
    let row_bytes = cols * size;
    let remainder = file_len % row_bytes;
    if remainder != 0 {
        return Err(Error::format(
            path,
            format!(
                "file length {file_len} is not a multiple of the row size {row_bytes} \
                 ({cols} columns of {dtype}); {remainder} bytes left over"
            ),
        ));
    }
    let rows = file_len / row_bytes;
    let columns = (0..cols).map(|j| ColumnLayout { name: format!("{stem}:{j}"), dtype, offset: j * size, stride: row_bytes }).collect();
    Ok(ParsedFile {
        format: "raw",
        rows,
        tensors: vec![TensorInfo { name: stem.to_string(), dtype, shape: vec![rows, cols], offset: 0, bytes: file_len }],
        columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "data.bin";

    fn parse_ok(file_len: u64, dtype: DType, cols: u64) -> ParsedFile {
        match parse_raw(Path::new(PATH), "data", file_len, dtype, cols) {
            Ok(parsed) => parsed,
            Err(e) => panic!("expected a valid layout, got: {e}"),
        }
    }

    fn assert_err(file_len: u64, dtype: DType, cols: u64, needle: &str) {
        match parse_raw(Path::new(PATH), "data", file_len, dtype, cols) {
            Ok(parsed) => panic!("expected an error containing {needle:?}, got {parsed:?}"),
            Err(e) => {
                assert!(matches!(e, Error::Format { .. }), "{e:?}");
                let message = e.to_string();
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                assert!(message.starts_with(&format!("{PATH}: ")), "{message}");
                assert!(!message.contains('\n'), "{message:?}");
            }
        }
    }

    fn col(name: &str, dtype: DType, offset: u64, stride: u64) -> ColumnLayout {
        ColumnLayout { name: name.into(), dtype, offset, stride }
    }

    #[test]
    fn one_column_is_still_indexed() {
        let p = parse_ok(40, DType::F32, 1);
        assert_eq!(p.format, "raw");
        assert_eq!(p.rows, 10);
        assert_eq!(p.columns, vec![col("data:0", DType::F32, 0, 4)]);
        assert_eq!(p.tensors, vec![TensorInfo { name: "data".into(), dtype: DType::F32, shape: vec![10, 1], offset: 0, bytes: 40 }]);
    }

    #[test]
    fn several_columns() {
        let p = parse_ok(96, DType::F64, 3);
        assert_eq!(p.rows, 4);
        assert_eq!(p.columns, vec![col("data:0", DType::F64, 0, 24), col("data:1", DType::F64, 8, 24), col("data:2", DType::F64, 16, 24),]);
        assert_eq!(p.tensors[0].shape, vec![4, 3]);
    }

    #[test]
    fn byte_and_half_types() {
        let p = parse_ok(10, DType::U8, 5);
        assert_eq!((p.rows, p.columns[4].offset, p.columns[4].stride), (2, 4, 5));
        let p = parse_ok(12, DType::BF16, 2);
        assert_eq!(p.rows, 3);
        assert_eq!(p.columns[1], col("data:1", DType::BF16, 2, 4));
        let p = parse_ok(3, DType::Bool, 1);
        assert_eq!(p.rows, 3);
    }

    #[test]
    fn empty_file_has_zero_rows() {
        let p = parse_ok(0, DType::I32, 4);
        assert_eq!(p.rows, 0);
        assert_eq!(p.columns.len(), 4);
        assert_eq!(p.tensors[0].shape, vec![0, 4]);
    }

    #[test]
    fn large_file() {
        let p = parse_ok(1 << 40, DType::U64, 2);
        assert_eq!(p.rows, 1 << 36);
    }

    #[test]
    fn zero_columns() {
        assert_err(16, DType::F32, 0, "raw files need at least 1 column (cols is 0)");
    }

    #[test]
    fn ragged_length() {
        assert_err(50, DType::F32, 3, "file length 50 is not a multiple of the row size 12 (3 columns of f32); 2 bytes left over");
        assert_err(7, DType::I16, 1, "1 bytes left over");
    }

    #[test]
    fn too_many_columns() {
        assert_err(0, DType::U8, u64::MAX, "at most 1048576 columns, asked for 18446744073709551615");
        assert_err(0, DType::F64, (1 << 20) + 1, "at most 1048576 columns");
    }
}
