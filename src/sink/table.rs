//! A streamed writer of column tables to `.safetensors` or `.npy` files.
//!
//! Rows arrive in tiles; the final row count is only known at the end (a filter may drop
//! rows), so the writer reserves room for `max_rows` rows, writes the header last and
//! commits the file atomically (see [`AtomicFile`]).
//!
//! * **safetensors**: one 1-D tensor of shape `[rows]` per column, in column order, data
//!   packed in column order, no `__metadata__`. The header room is sized for `max_rows`
//!   and the real header is padded with spaces to exactly that size. Column `k` is
//!   written at its *capacity* offset (room for `max_rows` rows); if fewer rows arrive,
//!   [`TableWriter::finish`] moves each column down to its packed offset and truncates.
//!   Holes left in the meantime are sparse on file systems that support them.
//! * **npy**: one 2-D array `[rows, columns]`, row-major, all columns of one dtype;
//!   format version 1.0 (2.0 only if the header would not fit a `u16`), header padded
//!   to a multiple of 64 bytes for `max_rows` and rewritten for the real count.
//!
//! Small tiles are gathered in one staging buffer (at most [`STAGE_BYTES`] plus one
//! block) so that the disk sees large sequential writes; tiles at least as large as the
//! stage go straight from the caller's buffers (safetensors, single-column npy).

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::atomic::AtomicFile;
use crate::dtype::DType;
use crate::{Error, Result};

/// Bytes of rows gathered before they are written out.
pub const STAGE_BYTES: usize = 8 << 20;

/// Largest piece moved at a time when compacting safetensors columns.
const COPY_CHUNK: usize = 8 << 20;

/// Rows interleaved together for npy, sized so the destination block stays in cache.
const INTERLEAVE_BLOCK_BYTES: usize = 32 << 10;

/// The output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A `.safetensors` file with one 1-D tensor per column.
    Safetensors,
    /// A `.npy` file with one 2-D `[rows, columns]` array.
    Npy,
}

impl OutputFormat {
    /// Chooses the format from the file extension (`.safetensors` or `.npy`, any case).
    pub fn from_path(path: &Path) -> Result<OutputFormat> {
        let ext = path.extension().and_then(|e| e.to_str());
        match ext {
            Some(e) if e.eq_ignore_ascii_case("safetensors") => Ok(OutputFormat::Safetensors),
            Some(e) if e.eq_ignore_ascii_case("npy") => Ok(OutputFormat::Npy),
            _ => Err(Error::plan(format!("output must end in .safetensors or .npy: {}", path.display()))),
        }
    }
}

/// One column of the output table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    /// The column's name (the tensor name in safetensors; not stored in npy).
    pub name: String,
    /// The column's element type.
    pub dtype: DType,
}

/// Where the bytes of the table go in the file.
#[derive(Debug)]
enum Layout {
    Safetensors {
        /// Reserved JSON length; `8 + json_room` is a multiple of 8 and the data start.
        json_room: usize,
        /// Absolute file offset of column k's region (room for `max_rows` rows).
        capacity: Vec<u64>,
        /// Bytes per row of the columns before column k (offset of k's staging slot,
        /// in units of `stage_rows`).
        prefix: Vec<usize>,
    },
    Npy {
        descr: &'static str,
        version: u8,
        /// Total header size (magic to '\n'), a multiple of 64; the data start.
        header_len: usize,
    },
}

/// Writes a table tile by tile and commits it atomically on [`finish`](TableWriter::finish).
///
/// Dropping it without `finish` leaves nothing behind: no target, no temporary file.
pub struct TableWriter {
    file: AtomicFile,
    layout: Layout,
    columns: Vec<OutputColumn>,
    /// Element size of each column.
    sizes: Vec<usize>,
    /// Bytes of one row over all columns.
    row_bytes: usize,
    max_rows: u64,
    /// Rows already written to the file.
    written: u64,
    /// Rows gathered in `buf` and not yet written.
    pending: usize,
    /// Capacity of the staging buffer, in rows (at least 1).
    stage_rows: usize,
    /// Staging buffer, reused for every tile and for compaction; grows only when needed.
    buf: Vec<u8>,
    copy_chunk: usize,
    /// Set after a failed write: the file's contents are unknown, so nothing more is done.
    failed: bool,
}

impl fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableWriter")
            .field("target", &self.file.target())
            .field("temp", &self.file.temp_path())
            .field("layout", &self.layout)
            .field("columns", &self.columns)
            .field("max_rows", &self.max_rows)
            .field("rows", &self.rows())
            .finish_non_exhaustive()
    }
}

impl TableWriter {
    /// Starts writing a table of `columns` with room for at most `max_rows` rows.
    ///
    /// Fails (before touching the disk) for duplicate column names, a safetensors column
    /// named `__metadata__`, an npy table without columns, with a bf16 column or with
    /// mixed dtypes, or a `max_rows` whose data would not fit a file offset. Fails if
    /// `target` exists and `force` is false.
    pub fn create(target: &Path, format: OutputFormat, columns: Vec<OutputColumn>, max_rows: u64, force: bool) -> Result<TableWriter> {
        Self::create_with(target, format, columns, max_rows, force, STAGE_BYTES, COPY_CHUNK)
    }

    /// [`create`](TableWriter::create) with explicit buffer sizes (tests use tiny ones).
    fn create_with(
        target: &Path,
        format: OutputFormat,
        columns: Vec<OutputColumn>,
        max_rows: u64,
        force: bool,
        stage_bytes: usize,
        copy_chunk: usize,
    ) -> Result<TableWriter> {
        check_names(&columns, format)?;
        let sizes: Vec<usize> = columns.iter().map(|c| c.dtype.size()).collect();
        let row_bytes: usize = sizes.iter().sum();
        let too_large = || Error::plan(format!("{}: {max_rows} rows of {row_bytes} bytes do not fit in a file", target.display()));
        let (layout, data_start) = match format {
            OutputFormat::Safetensors => {
                let json_len = safetensors_json(&columns, max_rows).ok_or_else(too_large)?.len();
                let json_room = round_up(8 + json_len, 8) - 8;
                let data_start = 8 + json_room as u64;
                let mut capacity = Vec::with_capacity(columns.len());
                let mut prefix = Vec::with_capacity(columns.len());
                let mut before = 0usize;
                for &size in &sizes {
                    let offset = max_rows.checked_mul(before as u64).and_then(|b| b.checked_add(data_start)).ok_or_else(too_large)?;
                    capacity.push(offset);
                    prefix.push(before);
                    before += size;
                }
                let layout = Layout::Safetensors { json_room, capacity, prefix };
                (layout, data_start)
            }
            OutputFormat::Npy => {
                let descr = npy_descr(&columns)?;
                let dict_len = npy_dict(descr, max_rows, columns.len()).len();
                let (version, header_len) = if round_up(10 + dict_len + 1, 64) - 10 <= 0xFFFF {
                    (1, round_up(10 + dict_len + 1, 64))
                } else {
                    (2, round_up(12 + dict_len + 1, 64))
                };
                let layout = Layout::Npy { descr, version, header_len };
                (layout, header_len as u64)
            }
        };
        // The whole table must be addressable with u64 offsets.
        max_rows.checked_mul(row_bytes as u64).and_then(|b| b.checked_add(data_start)).ok_or_else(too_large)?;

        let stage_rows = (stage_bytes / row_bytes.max(1)).min(usize::try_from(max_rows).unwrap_or(usize::MAX)).max(1);
        let file = AtomicFile::create(target, force)?;
        Ok(TableWriter {
            file,
            layout,
            columns,
            sizes,
            row_bytes,
            max_rows,
            written: 0,
            pending: 0,
            stage_rows,
            buf: Vec::new(),
            copy_chunk: copy_chunk.max(1),
            failed: false,
        })
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.written + self.pending as u64
    }

    /// The most rows this writer accepts.
    pub fn max_rows(&self) -> u64 {
        self.max_rows
    }

    /// The output's columns, in order.
    pub fn columns(&self) -> &[OutputColumn] {
        &self.columns
    }

    /// Appends `rows` rows. `columns[k]` holds exactly `rows * size` little-endian bytes
    /// of column k.
    ///
    /// A wrong number of columns, a wrong byte length or more than `max_rows` rows in all
    /// is an error that leaves the writer unchanged. After an I/O error the writer
    /// refuses further use.
    pub fn write_tile(&mut self, rows: usize, columns: &[&[u8]]) -> Result<()> {
        self.check_usable()?;
        if columns.len() != self.columns.len() {
            return Err(Error::plan(format!(
                "{}: tile has {} columns, the output has {}",
                self.file.target().display(),
                columns.len(),
                self.columns.len()
            )));
        }
        let total = self.rows().checked_add(rows as u64);
        if total.is_none_or(|t| t > self.max_rows) {
            return Err(Error::plan(format!(
                "{}: {} more rows would exceed the {} rows reserved ({} written)",
                self.file.target().display(),
                rows,
                self.max_rows,
                self.rows()
            )));
        }
        for ((col, data), &size) in self.columns.iter().zip(columns).zip(&self.sizes) {
            let expected = rows.checked_mul(size);
            if expected != Some(data.len()) {
                return Err(Error::plan(format!(
                    "{}: column {}: {} rows of {} need {} bytes, got {}",
                    self.file.target().display(),
                    col.name,
                    rows,
                    col.dtype,
                    rows as u128 * size as u128,
                    data.len()
                )));
            }
        }
        if rows == 0 {
            return Ok(());
        }
        let result = match self.layout {
            Layout::Safetensors { .. } => self.write_columns(rows, columns),
            Layout::Npy { .. } => self.write_rows(rows, columns),
        };
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes the header for the actual row count, makes the file exact and renames it
    /// over the target. Returns the number of rows written.
    pub fn finish(self) -> Result<u64> {
        self.finish_unless(None)
    }

    /// [`finish`](Self::finish), but gives up with [`Error::Interrupted`] (leaving nothing at
    /// the target) if `cancel` is set once the data is on disk, just before the rename.
    pub fn finish_unless(mut self, cancel: Option<&std::sync::atomic::AtomicBool>) -> Result<u64> {
        self.check_usable()?;
        self.flush()?;
        let rows = self.written;
        let temp = self.file.target().to_path_buf();
        let (header, data_start) = match &self.layout {
            Layout::Safetensors { json_room, capacity, prefix } => {
                let data_start = 8 + *json_room as u64;
                if rows < self.max_rows {
                    for k in 1..self.columns.len() {
                        let to = data_start + rows * prefix[k] as u64;
                        let len = rows * self.sizes[k] as u64;
                        move_down(self.file.file(), &temp, capacity[k], to, len, self.copy_chunk, &mut self.buf)?;
                    }
                }
                let json = safetensors_json(&self.columns, rows)
                    .filter(|j| j.len() <= *json_room)
                    .ok_or_else(|| internal(&temp, "safetensors header outgrew its room"))?;
                let mut header = Vec::with_capacity(8 + json_room);
                header.extend_from_slice(&(*json_room as u64).to_le_bytes());
                header.extend_from_slice(json.as_bytes());
                header.resize(8 + json_room, b' ');
                (header, data_start)
            }
            Layout::Npy { descr, version, header_len } => {
                let header = npy_header(descr, *version, *header_len, rows, self.columns.len())
                    .ok_or_else(|| internal(&temp, "npy header outgrew its room"))?;
                (header, *header_len as u64)
            }
        };
        let file = self.file.file();
        file.write_all_at(&header, 0).map_err(|e| Error::io(&temp, e))?;
        // Cannot overflow: checked for max_rows >= rows in `create`.
        let end = data_start + rows * self.row_bytes as u64;
        file.set_len(end).map_err(|e| Error::io(&temp, e))?;
        self.file.commit_unless(cancel)?;
        Ok(rows)
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            Err(Error::plan(format!("{}: an earlier write failed; the output is incomplete", self.file.target().display())))
        } else {
            Ok(())
        }
    }

    /// safetensors: column k's bytes go to column k's region.
    fn write_columns(&mut self, rows: usize, columns: &[&[u8]]) -> Result<()> {
        if self.pending + rows > self.stage_rows {
            self.flush()?;
        }
        let Layout::Safetensors { capacity, prefix, .. } = &self.layout else {
            return Err(internal(self.file.temp_path(), "layout mismatch"));
        };
        if rows >= self.stage_rows {
            // A large tile (and nothing pending): write it straight from the caller.
            for ((data, &cap), &size) in columns.iter().zip(capacity).zip(&self.sizes) {
                let offset = cap + self.written * size as u64;
                self.file.file().write_all_at(data, offset).map_err(|e| Error::io(self.file.target(), e))?;
            }
            self.written += rows as u64;
            return Ok(());
        }
        // Column k's slot in the stage starts at stage_rows * prefix[k].
        let stage_len = self.stage_rows * self.row_bytes;
        if self.buf.len() < stage_len {
            self.buf.resize(stage_len, 0);
        }
        for ((data, &before), &size) in columns.iter().zip(prefix).zip(&self.sizes) {
            let start = self.stage_rows * before + self.pending * size;
            self.buf[start..start + data.len()].copy_from_slice(data);
        }
        self.pending += rows;
        if self.pending == self.stage_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// npy: rows are interleaved into row-major order in the stage.
    fn write_rows(&mut self, rows: usize, columns: &[&[u8]]) -> Result<()> {
        if let ([data], 0, true) = (columns, self.pending, rows >= self.stage_rows) {
            // One column is already row-major: write a large tile straight from the caller.
            let offset = self.data_start() + self.written * self.row_bytes as u64;
            self.file.file().write_all_at(data, offset).map_err(|e| Error::io(self.file.target(), e))?;
            self.written += rows as u64;
            return Ok(());
        }
        let size = self.row_bytes / self.columns.len().max(1);
        let mut done = 0;
        while done < rows {
            let n = (rows - done).min(self.stage_rows - self.pending);
            let end = (self.pending + n) * self.row_bytes;
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            let dst = &mut self.buf[self.pending * self.row_bytes..end];
            interleave(dst, columns, done, size, self.row_bytes);
            self.pending += n;
            done += n;
            if self.pending == self.stage_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the staged rows to the file.
    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let file = self.file.file();
        let temp = self.file.target();
        match &self.layout {
            Layout::Safetensors { capacity, prefix, .. } => {
                for ((&cap, &before), &size) in capacity.iter().zip(prefix).zip(&self.sizes) {
                    let start = self.stage_rows * before;
                    let data = &self.buf[start..start + self.pending * size];
                    let offset = cap + self.written * size as u64;
                    file.write_all_at(data, offset).map_err(|e| Error::io(temp, e))?;
                }
            }
            Layout::Npy { header_len, .. } => {
                let data = &self.buf[..self.pending * self.row_bytes];
                let offset = *header_len as u64 + self.written * self.row_bytes as u64;
                file.write_all_at(data, offset).map_err(|e| Error::io(temp, e))?;
            }
        }
        self.written += self.pending as u64;
        self.pending = 0;
        Ok(())
    }

    fn data_start(&self) -> u64 {
        match &self.layout {
            Layout::Safetensors { json_room, .. } => 8 + *json_room as u64,
            Layout::Npy { header_len, .. } => *header_len as u64,
        }
    }
}

/// Rejects duplicate names, and `__metadata__` in safetensors (it is not a tensor there).
fn check_names(columns: &[OutputColumn], format: OutputFormat) -> Result<()> {
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].iter().any(|d| d.name == c.name) {
            return Err(Error::plan(format!("output column {:?} appears more than once", c.name)));
        }
        if format == OutputFormat::Safetensors && c.name == "__metadata__" {
            return Err(Error::plan("an output column cannot be named __metadata__ in .safetensors"));
        }
    }
    Ok(())
}

/// The one npy descr shared by all columns.
fn npy_descr(columns: &[OutputColumn]) -> Result<&'static str> {
    let Some(first) = columns.first() else {
        return Err(Error::plan("an .npy output needs at least one column (use .safetensors for an empty table)"));
    };
    if let Some(c) = columns.iter().find(|c| c.dtype.npy_descr().is_none()) {
        return Err(Error::plan(format!("column {} is {}, which .npy cannot store; write .safetensors instead", c.name, c.dtype)));
    }
    if let Some(c) = columns.iter().find(|c| c.dtype != first.dtype) {
        return Err(Error::plan(format!(
            ".npy needs all columns of one dtype, but {} is {} and {} is {}; \
             write .safetensors to keep mixed dtypes",
            first.name, first.dtype, c.name, c.dtype
        )));
    }
    first.dtype.npy_descr().ok_or_else(|| Error::plan("no npy dtype"))
}

/// The safetensors JSON header for `rows` rows (no padding); `None` on overflow.
///
/// Every number in it grows with `rows`, so the header for `max_rows` is the longest.
fn safetensors_json(columns: &[OutputColumn], rows: u64) -> Option<String> {
    let mut json = String::from("{");
    let mut offset = 0u64;
    for (i, c) in columns.iter().enumerate() {
        let end = offset.checked_add(rows.checked_mul(c.dtype.size() as u64)?)?;
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(&c.name).ok()?);
        json.push_str(&format!(r#":{{"dtype":"{}","shape":[{rows}],"data_offsets":[{offset},{end}]}}"#, c.dtype.safetensors_name()));
        offset = end;
    }
    json.push('}');
    Some(json)
}

/// The npy header dict (no padding).
fn npy_dict(descr: &str, rows: u64, columns: usize) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {columns}), }}")
}

/// The complete npy header of exactly `header_len` bytes; `None` if it does not fit.
fn npy_header(descr: &str, version: u8, header_len: usize, rows: u64, columns: usize) -> Option<Vec<u8>> {
    let dict = npy_dict(descr, rows, columns);
    let mut header = Vec::with_capacity(header_len);
    header.extend_from_slice(b"\x93NUMPY");
    header.extend_from_slice(&[version, 0]);
    if version == 1 {
        let len = u16::try_from(header_len.checked_sub(10)?).ok()?;
        header.extend_from_slice(&len.to_le_bytes());
    } else {
        let len = u32::try_from(header_len.checked_sub(12)?).ok()?;
        header.extend_from_slice(&len.to_le_bytes());
    }
    header.extend_from_slice(dict.as_bytes());
    if header.len() + 1 > header_len {
        return None;
    }
    header.resize(header_len - 1, b' ');
    header.push(b'\n');
    Some(header)
}

/// Interleaves rows `first..` of every column into row-major `dst` (whole rows), working
/// in cache-sized blocks of rows. All columns have element size `size`.
fn interleave(dst: &mut [u8], columns: &[&[u8]], first: usize, size: usize, row_bytes: usize) {
    let block_rows = (INTERLEAVE_BLOCK_BYTES / row_bytes.max(1)).max(1);
    for (b, block) in dst.chunks_mut(block_rows * row_bytes).enumerate() {
        let from = (first + b * block_rows) * size;
        for (k, col) in columns.iter().enumerate() {
            let src = &col[from..];
            let at = k * size;
            match size {
                1 => scatter::<1>(block, src, at, row_bytes),
                2 => scatter::<2>(block, src, at, row_bytes),
                4 => scatter::<4>(block, src, at, row_bytes),
                8 => scatter::<8>(block, src, at, row_bytes),
                _ => {
                    for (row, s) in block.chunks_exact_mut(row_bytes).zip(src.chunks_exact(size)) {
                        row[at..at + size].copy_from_slice(s);
                    }
                }
            }
        }
    }
}

/// Copies consecutive `S`-byte elements of `src` to byte `at` of consecutive rows of `dst`.
#[inline]
fn scatter<const S: usize>(dst: &mut [u8], src: &[u8], at: usize, row_bytes: usize) {
    for (row, s) in dst.chunks_exact_mut(row_bytes).zip(src.chunks_exact(S)) {
        row[at..at + S].copy_from_slice(s);
    }
}

/// Moves `len` bytes at `from` down to `to` (`to <= from`; the ranges may overlap),
/// front to back in pieces of at most `chunk` bytes through `buf`.
///
/// Each piece is read before it is written, and it is written below the next piece's
/// source, so overlapping ranges are copied correctly.
fn move_down(file: &File, path: &Path, from: u64, to: u64, len: u64, chunk: usize, buf: &mut Vec<u8>) -> Result<()> {
    if len == 0 || from == to {
        return Ok(());
    }
    if to > from {
        return Err(internal(path, "column moved up during compaction"));
    }
    let piece = usize::try_from(len).unwrap_or(usize::MAX).min(chunk);
    if buf.len() < piece {
        buf.resize(piece, 0);
    }
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).unwrap_or(usize::MAX).min(piece);
        let part = &mut buf[..n];
        file.read_exact_at(part, from + done).map_err(|e| Error::io(path, e))?;
        file.write_all_at(part, to + done).map_err(|e| Error::io(path, e))?;
        done += n as u64;
    }
    Ok(())
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// An invariant of the writer failed; reported as an error rather than a panic.
fn internal(path: &Path, what: &str) -> Error {
    Error::format(PathBuf::from(path), format!("internal error: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::ErrorKind;

    /// A fresh, empty directory unique to one test.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tilestream-table-{}-{}", std::process::id(), name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn col(name: &str, dtype: DType) -> OutputColumn {
        OutputColumn { name: name.to_string(), dtype }
    }

    /// Deterministic pseudo-random column bytes (bool columns hold 0 or 1).
    fn column_bytes(seed: u64, rows: usize, dtype: DType) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..rows * dtype.size())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if dtype == DType::Bool { (x & 1) as u8 } else { (x >> 24) as u8 }
            })
            .collect()
    }

    /// Writes `tiles` (row counts) of generated data; returns the full columns written.
    fn write_table(
        path: &Path,
        format: OutputFormat,
        columns: &[OutputColumn],
        max_rows: u64,
        tiles: &[usize],
        stage_bytes: usize,
        copy_chunk: usize,
    ) -> Vec<Vec<u8>> {
        let rows: usize = tiles.iter().sum();
        let data: Vec<Vec<u8>> = columns.iter().enumerate().map(|(k, c)| column_bytes(k as u64 + 1, rows, c.dtype)).collect();
        let mut w = TableWriter::create_with(path, format, columns.to_vec(), max_rows, false, stage_bytes, copy_chunk).unwrap();
        let mut start = 0;
        for &n in tiles {
            let slices: Vec<&[u8]> =
                columns.iter().zip(&data).map(|(c, d)| &d[start * c.dtype.size()..(start + n) * c.dtype.size()]).collect();
            w.write_tile(n, &slices).unwrap();
            start += n;
            assert_eq!(w.rows(), start as u64);
        }
        assert_eq!(w.finish().unwrap(), rows as u64);
        data
    }

    /// Reads a safetensors file with the `safetensors` crate and compares it exactly.
    fn check_safetensors(path: &Path, columns: &[OutputColumn], data: &[Vec<u8>]) {
        let bytes = fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0, "header size {n}");
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(header.starts_with('{'), "{header}");
        assert!(!header.contains("__metadata__"), "{header}");
        // Tensors appear in column order in the header text.
        let mut at = 0;
        for c in columns {
            let key = format!("{}:", serde_json::to_string(&c.name).unwrap());
            at += header[at..].find(&key).unwrap();
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), columns.len());
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert!(metadata.metadata().is_none());
        if data.iter().all(|d| !d.is_empty()) {
            assert_eq!(metadata.offset_keys(), columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>());
        }
        for (c, d) in columns.iter().zip(data) {
            let t = st.tensor(&c.name).unwrap();
            assert_eq!(format!("{:?}", t.dtype()), c.dtype.safetensors_name());
            assert_eq!(t.shape(), &[d.len() / c.dtype.size()]);
            assert!(t.data() == d.as_slice(), "column {} differs", c.name);
        }
    }

    /// Parses an npy file: (version, header dict text without padding, data bytes).
    fn parse_npy(path: &Path) -> (u8, String, Vec<u8>) {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let version = bytes[6];
        assert_eq!(bytes[7], 0);
        let (prefix, len) = match version {
            1 => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
            2 => (12, u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize),
            v => panic!("version {v}"),
        };
        let total = prefix + len;
        assert_eq!(total % 64, 0, "header size {total}");
        let text = std::str::from_utf8(&bytes[prefix..total]).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        let dict = text.trim_end_matches('\n').trim_end_matches(' ').to_string();
        (version, dict, bytes[total..].to_vec())
    }

    /// Checks an npy file against the columns it should hold.
    fn check_npy(path: &Path, columns: &[OutputColumn], data: &[Vec<u8>]) {
        let (version, dict, bytes) = parse_npy(path);
        assert_eq!(version, 1);
        let size = columns[0].dtype.size();
        let rows = data[0].len() / size;
        let descr = columns[0].dtype.npy_descr().unwrap();
        assert_eq!(dict, format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {}), }}", columns.len()));
        let mut expected = Vec::with_capacity(rows * size * columns.len());
        for r in 0..rows {
            for d in data {
                expected.extend_from_slice(&d[r * size..(r + 1) * size]);
            }
        }
        assert!(bytes == expected, "npy data differs");
    }

    fn all_dtype_columns() -> Vec<OutputColumn> {
        DType::ALL.iter().map(|&d| col(&format!("c_{}", d.name()), d)).collect()
    }

    #[test]
    fn from_path_by_extension() {
        let f = |p: &str| OutputFormat::from_path(Path::new(p));
        assert_eq!(f("a/b.safetensors").unwrap(), OutputFormat::Safetensors);
        assert_eq!(f("b.npy").unwrap(), OutputFormat::Npy);
        assert_eq!(f("B.NPY").unwrap(), OutputFormat::Npy);
        for bad in ["b.npz", "b", "safetensors", "b.npy.tmp"] {
            let e = f(bad).unwrap_err().to_string();
            assert!(e.contains(".safetensors or .npy") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn safetensors_all_dtypes_full() {
        let dir = test_dir("st_full");
        let path = dir.join("out.safetensors");
        let columns = all_dtype_columns();
        for (stage, chunk) in [(STAGE_BYTES, COPY_CHUNK), (64, 5), (1, 1)] {
            let tiles = [1, 7, 300, 0, 692];
            let data = write_table(&path, OutputFormat::Safetensors, &columns, 1000, &tiles, stage, chunk);
            check_safetensors(&path, &columns, &data);
            fs::remove_file(&path).unwrap();
        }
        assert!(dir_names(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_compaction_when_fewer_rows() {
        let dir = test_dir("st_compact");
        let path = dir.join("out.safetensors");
        let columns = vec![
            col("x", DType::F32),
            col("h", DType::F16),
            col("b", DType::BF16),
            col("u", DType::U8),
            col("i", DType::I64),
            col("ok", DType::Bool),
        ];
        // 617 of 1000 rows: columns overlap their packed place; tiny chunks test that.
        for (stage, chunk) in [(STAGE_BYTES, COPY_CHUNK), (100, 3), (7, 1000), (1, 1)] {
            for tiles in [&[617][..], &[1, 16, 0, 300, 300], &[999], &[1]] {
                let data = write_table(&path, OutputFormat::Safetensors, &columns, 1000, tiles, stage, chunk);
                check_safetensors(&path, &columns, &data);
                fs::remove_file(&path).unwrap();
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_header_room_across_digit_counts() {
        let dir = test_dir("st_digits");
        let path = dir.join("out.safetensors");
        let columns = vec![col("a", DType::U8), col("b", DType::F64)];
        for (max_rows, rows) in [(10, 9), (10, 10), (100_000, 5), (99, 0), (1, 1)] {
            let data = write_table(&path, OutputFormat::Safetensors, &columns, max_rows, &[rows], 16, 4);
            check_safetensors(&path, &columns, &data);
            let len = fs::metadata(&path).unwrap().len();
            let n = u64::from_le_bytes(fs::read(&path).unwrap()[..8].try_into().unwrap());
            assert_eq!(len, 8 + n + rows as u64 * 9);
            fs::remove_file(&path).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_zero_rows_and_zero_columns() {
        let dir = test_dir("st_zero");
        let path = dir.join("out.safetensors");
        let columns = all_dtype_columns();
        for max_rows in [0, 1, 12345] {
            let data = write_table(&path, OutputFormat::Safetensors, &columns, max_rows, &[0, 0], STAGE_BYTES, COPY_CHUNK);
            check_safetensors(&path, &columns, &data);
            fs::remove_file(&path).unwrap();
        }

        let mut w = TableWriter::create(&path, OutputFormat::Safetensors, vec![], 10, false).unwrap();
        w.write_tile(4, &[]).unwrap();
        assert_eq!(w.finish().unwrap(), 4);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes, b"\x08\0\0\0\0\0\0\0{}      ");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_many_uneven_tiles() {
        let dir = test_dir("st_many");
        let path = dir.join("out.safetensors");
        let columns = vec![col("a", DType::F32), col("b", DType::U8), col("c \"quoted\" \\ é", DType::I64), col("d", DType::F16)];
        let mut seed = 12345u64;
        for round in 0..12 {
            let mut tiles = Vec::new();
            for _ in 0..(5 + round * 3) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                tiles.push(((seed >> 33) % 97) as usize);
            }
            let rows: usize = tiles.iter().sum();
            let max_rows = rows as u64 + (seed >> 40) % 50 * (round % 2);
            let stage = [1, 13, 200, 4096, STAGE_BYTES][round as usize % 5];
            let chunk = [1, 7, 64, COPY_CHUNK][round as usize % 4];
            let data = write_table(&path, OutputFormat::Safetensors, &columns, max_rows, &tiles, stage, chunk);
            check_safetensors(&path, &columns, &data);
            fs::remove_file(&path).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_larger_than_stage() {
        let dir = test_dir("st_large");
        let path = dir.join("out.safetensors");
        let columns = vec![col("a", DType::F32), col("b", DType::U8), col("c", DType::F64)];
        // 13 bytes a row: the default 8 MiB stage holds ~645k rows.
        let mut tiles = vec![100, 3];
        tiles.extend(std::iter::repeat_n(200_000, 4));
        tiles.push(900_000);
        tiles.push(7);
        let data = write_table(&path, OutputFormat::Safetensors, &columns, 2_500_000, &tiles, STAGE_BYTES, COPY_CHUNK);
        check_safetensors(&path, &columns, &data);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_row_major() {
        let dir = test_dir("npy");
        let path = dir.join("out.npy");
        let columns = vec![col("a", DType::F32), col("b", DType::F32), col("c", DType::F32)];
        for (stage, max_rows, tiles) in [
            (STAGE_BYTES, 1000u64, &[1000][..]),
            (STAGE_BYTES, 1000, &[1, 7, 0, 300, 5]),
            (12, 1000, &[1, 7, 0, 300, 5]),
            (100, 100_000, &[50, 1, 99, 3]),
            (1, 10, &[3, 4]),
            (STAGE_BYTES, 10, &[]),
            (STAGE_BYTES, 0, &[0]),
        ] {
            let data = write_table(&path, OutputFormat::Npy, &columns, max_rows, tiles, stage, COPY_CHUNK);
            check_npy(&path, &columns, &data);
            fs::remove_file(&path).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_every_dtype_and_single_column() {
        let dir = test_dir("npy_dtypes");
        let path = dir.join("out.npy");
        for dtype in DType::ALL.into_iter().filter(|d| d.npy_descr().is_some()) {
            for ncols in [1, 2, 5] {
                let columns: Vec<OutputColumn> = (0..ncols).map(|k| col(&format!("c{k}"), dtype)).collect();
                // stage 40 bytes: single-column tiles of >= 40/size rows go direct.
                for stage in [40, STAGE_BYTES] {
                    let data = write_table(&path, OutputFormat::Npy, &columns, 500, &[3, 100, 1, 0, 64, 2], stage, COPY_CHUNK);
                    check_npy(&path, &columns, &data);
                    fs::remove_file(&path).unwrap();
                }
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_larger_than_stage() {
        let dir = test_dir("npy_large");
        let path = dir.join("out.npy");
        let columns: Vec<OutputColumn> = (0..4).map(|k| col(&format!("c{k}"), DType::I16)).collect();
        let data = write_table(&path, OutputFormat::Npy, &columns, 3_000_000, &[5, 1_200_000, 3, 1_000_000], STAGE_BYTES, COPY_CHUNK);
        check_npy(&path, &columns, &data);
        fs::remove_file(&path).unwrap();
        let one = vec![col("x", DType::F64)];
        let data = write_table(&path, OutputFormat::Npy, &one, 3_000_000, &[5, 1_200_000, 3, 1_100_000], STAGE_BYTES, COPY_CHUNK);
        check_npy(&path, &one, &data);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_header_sizes() {
        for (rows, cols) in [(0u64, 1usize), (u64::MAX, 1), (12, 100_000)] {
            let dict_len = npy_dict("<f4", rows, cols).len();
            let total = round_up(10 + dict_len + 1, 64);
            let h = npy_header("<f4", 1, total, rows, cols).unwrap();
            assert_eq!(h.len(), total);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(h.last(), Some(&b'\n'));
        }
        // Too small a room is refused, not truncated.
        assert!(npy_header("<f4", 1, 64, u64::MAX, usize::MAX).is_none());
        let h = npy_header("<f4", 2, 128, 5, 2).unwrap();
        assert_eq!(&h[6..12], &[2, 0, 116, 0, 0, 0]);
    }

    #[test]
    fn npy_loads_in_numpy() {
        let have_numpy = std::process::Command::new("python3").args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success());
        if !have_numpy {
            println!("skipped: numpy not installed");
            return;
        }
        let dir = test_dir("numpy");
        for (dtype, ncols, rows, max_rows) in [
            (DType::F32, 3, 1000, 2000u64),
            (DType::F16, 1, 17, 17),
            (DType::Bool, 2, 5, 100),
            (DType::I64, 4, 0, 10),
            (DType::U8, 2, 70, 70),
        ] {
            let path = dir.join(format!("{}.npy", dtype.name()));
            let columns: Vec<OutputColumn> = (0..ncols).map(|k| col(&format!("c{k}"), dtype)).collect();
            let data = write_table(&path, OutputFormat::Npy, &columns, max_rows, &[rows], 64, COPY_CHUNK);
            let out = std::process::Command::new("python3")
                .arg("-c")
                .arg(
                    "import sys, numpy as np\n\
                     a = np.load(sys.argv[1])\n\
                     print(a.dtype.str, a.shape[0], a.shape[1], a.tobytes().hex())",
                )
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).unwrap();
            let fields: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(fields[0], dtype.npy_descr().unwrap());
            assert_eq!(fields[1], rows.to_string());
            assert_eq!(fields[2], ncols.to_string());
            let mut hex = String::new();
            for r in 0..rows {
                for d in &data {
                    for b in &d[r * dtype.size()..(r + 1) * dtype.size()] {
                        hex.push_str(&format!("{b:02x}"));
                    }
                }
            }
            assert_eq!(fields.get(3).copied().unwrap_or(""), hex);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drop_without_finish_leaves_nothing() {
        let dir = test_dir("drop");
        for (name, format, columns) in [
            ("out.safetensors", OutputFormat::Safetensors, vec![col("a", DType::F32), col("b", DType::U8)]),
            ("out.npy", OutputFormat::Npy, vec![col("a", DType::U8), col("b", DType::U8)]),
        ] {
            let path = dir.join(name);
            let mut w = TableWriter::create_with(&path, format, columns.clone(), 100, false, 4, 4).unwrap();
            let a = column_bytes(1, 10, columns[0].dtype);
            let b = column_bytes(2, 10, columns[1].dtype);
            w.write_tile(10, &[&a, &b]).unwrap();
            assert!(w.file.temp_path().exists());
            drop(w);
            assert!(dir_names(&dir).is_empty(), "{:?}", dir_names(&dir));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_target_needs_force() {
        let dir = test_dir("force");
        let path = dir.join("out.safetensors");
        fs::write(&path, b"old").unwrap();
        let columns = vec![col("a", DType::I32)];
        let err = TableWriter::create(&path, OutputFormat::Safetensors, columns.clone(), 5, false).unwrap_err();
        match &err {
            Error::Io { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), ErrorKind::AlreadyExists);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(dir_names(&dir), vec!["out.safetensors".to_string()]);

        let mut w = TableWriter::create(&path, OutputFormat::Safetensors, columns.clone(), 5, true).unwrap();
        let a = column_bytes(1, 2, DType::I32);
        w.write_tile(2, &[&a]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        check_safetensors(&path, &columns, &[a]);
        assert_eq!(dir_names(&dir), vec!["out.safetensors".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_tiles_are_errors_and_leave_the_writer_usable() {
        let dir = test_dir("bad_tiles");
        for (name, format) in [("out.safetensors", OutputFormat::Safetensors), ("out.npy", OutputFormat::Npy)] {
            let path = dir.join(name);
            let columns = vec![col("a", DType::U16), col("b", DType::U16)];
            let mut w = TableWriter::create_with(&path, format, columns.clone(), 10, false, 8, 8).unwrap();
            let a = column_bytes(1, 12, DType::U16);
            let b = column_bytes(2, 12, DType::U16);

            let e = w.write_tile(11, &[&a[..22], &b[..22]]).unwrap_err();
            assert!(matches!(e, Error::Plan(_)), "{e}");
            assert!(e.to_string().contains("exceed"), "{e}");

            let e = w.write_tile(3, &[&a[..6], &b[..5]]).unwrap_err();
            assert!(matches!(e, Error::Plan(_)), "{e}");
            assert!(e.to_string().contains("column b"), "{e}");

            let e = w.write_tile(3, &[&a[..6]]).unwrap_err();
            assert!(matches!(e, Error::Plan(_)), "{e}");

            let e = w.write_tile(usize::MAX, &[&a[..6], &b[..6]]).unwrap_err();
            assert!(matches!(e, Error::Plan(_)), "{e}");

            w.write_tile(6, &[&a[..12], &b[..12]]).unwrap();
            let e = w.write_tile(5, &[&a[12..22], &b[12..22]]).unwrap_err();
            assert!(e.to_string().contains("exceed"), "{e}");
            w.write_tile(4, &[&a[12..20], &b[12..20]]).unwrap();
            let e = w.write_tile(1, &[&a[20..22], &b[20..22]]).unwrap_err();
            assert!(e.to_string().contains("exceed"), "{e}");
            assert_eq!(w.finish().unwrap(), 10);
            let data = [a[..20].to_vec(), b[..20].to_vec()];
            match format {
                OutputFormat::Safetensors => check_safetensors(&path, &columns, &data),
                OutputFormat::Npy => check_npy(&path, &columns, &data),
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_tables_are_refused_before_touching_disk() {
        let dir = test_dir("refused");
        let npy = dir.join("out.npy");
        let st = dir.join("out.safetensors");
        let create = |path: &Path, format, columns: Vec<OutputColumn>, max_rows| {
            TableWriter::create(path, format, columns, max_rows, false).unwrap_err()
        };

        let e = create(&npy, OutputFormat::Npy, vec![col("a", DType::BF16)], 10);
        assert!(matches!(e, Error::Plan(_)));
        assert!(e.to_string().contains(".safetensors") && e.to_string().contains("bf16"), "{e}");

        let e = create(&npy, OutputFormat::Npy, vec![col("a", DType::F32), col("b", DType::F64)], 10);
        assert!(matches!(e, Error::Plan(_)));
        assert!(e.to_string().contains(".safetensors"), "{e}");

        let e = create(&npy, OutputFormat::Npy, vec![], 10);
        assert!(matches!(e, Error::Plan(_)));

        for (path, format) in [(&npy, OutputFormat::Npy), (&st, OutputFormat::Safetensors)] {
            let e = create(path, format, vec![col("a", DType::U8), col("b", DType::U8), col("a", DType::U8)], 10);
            assert!(matches!(e, Error::Plan(_)));
            assert!(e.to_string().contains("\"a\""), "{e}");

            let e = create(path, format, vec![col("a", DType::U64)], u64::MAX / 4);
            assert!(matches!(e, Error::Plan(_)), "{e}");
        }

        let e = create(&st, OutputFormat::Safetensors, vec![col("__metadata__", DType::U8)], 10);
        assert!(matches!(e, Error::Plan(_)));
        assert!(dir_names(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn move_down_handles_overlap() {
        let dir = test_dir("move");
        let path = dir.join("f");
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let orig: Vec<u8> = (0..200u8).collect();
        for (from, to, len, chunk) in [(50u64, 10u64, 100u64, 7usize), (50, 45, 150, 3), (9, 0, 191, 1000)] {
            file.write_all_at(&orig, 0).unwrap();
            let mut buf = Vec::new();
            move_down(&file, &path, from, to, len, chunk, &mut buf).unwrap();
            assert!(buf.len() <= chunk);
            let mut got = vec![0u8; len as usize];
            file.read_exact_at(&mut got, to).unwrap();
            assert_eq!(got, orig[from as usize..(from + len) as usize]);
        }
        let mut buf = Vec::new();
        assert!(move_down(&file, &path, 0, 10, 5, 4, &mut buf).is_err());
        let e = move_down(&file, &path, 150, 0, 100, 64, &mut buf).unwrap_err();
        match e {
            Error::Io { path: p, .. } => assert_eq!(p, path),
            other => panic!("unexpected {other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
