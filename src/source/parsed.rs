//! What a format parser returns: the tensors of one file, validated, as columns.

use crate::dtype::DType;

/// One tensor of a file as its header describes it (after validation).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name (safetensors) or the file stem (npy, raw).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape as stored: `[N]` or `[N, k]`.
    pub shape: Vec<u64>,
    /// Absolute byte offset of the first element in the file.
    pub offset: u64,
    /// Size in bytes (`product(shape) * dtype.size()`).
    pub bytes: u64,
}

/// One column of a file: where its values lie in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnLayout {
    /// Column name: the tensor name for a 1-D tensor, `name:j` for column j of a 2-D one.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Absolute byte offset of row 0's value in the file.
    pub offset: u64,
    /// Bytes between consecutive rows (`dtype.size()` for a contiguous column).
    pub stride: u64,
}

/// A file's validated contents: every column has `rows` values, all inside the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFile {
    /// `"safetensors"`, `"npy"` or `"raw"`.
    pub format: &'static str,
    /// Row count shared by every column.
    pub rows: u64,
    /// Tensors in file order (safetensors: ordered by data offset).
    pub tensors: Vec<TensorInfo>,
    /// Columns in file order.
    pub columns: Vec<ColumnLayout>,
}

/// A name in backticks, escaped and shortened so that a message stays on one short line.
pub(crate) fn show(name: &str) -> String {
    format!("`{}`", escape(name))
}

/// Escapes control characters and cuts text longer than 80 characters.
pub(crate) fn escape(text: &str) -> String {
    const LIMIT: usize = 80;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == LIMIT {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
