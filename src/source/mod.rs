//! Memory-mapped datasets: files opened, validated and exposed as named columns.

pub mod npy;
pub mod parsed;
pub mod raw;
pub mod safetensors;
mod sigbus;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::dtype::DType;
use crate::error::{Error, Result};
use parsed::{ParsedFile, TensorInfo};

/// How to read a file: by its extension, or as raw row-major binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Decide from the extension: `.safetensors` or `.npy`.
    Auto,
    /// A headerless row-major file of `cols` columns of one dtype.
    Raw {
        /// Element type.
        dtype: DType,
        /// Columns per row.
        cols: u64,
    },
}

/// One mapped file of a dataset.
#[derive(Debug)]
pub struct MappedFile {
    /// Turns a SIGBUS from this mapping (the file shrank) into an error. Declared before
    /// `map` so that the watch ends before the mapping goes away.
    watch: Option<sigbus::Watch>,
    path: PathBuf,
    map: Option<Mmap>,
    len: u64,
    modified: Option<SystemTime>,
    parsed: ParsedFile,
}

impl MappedFile {
    /// The file's path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for an empty file (never the case for an opened dataset file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// `"safetensors"`, `"npy"` or `"raw"`.
    pub fn format(&self) -> &'static str {
        self.parsed.format
    }
    /// The file's tensors as its header describes them.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.parsed.tensors
    }
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// One column of a dataset: where its values are and what type they have.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Unique name within the dataset.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Index of the file that holds it.
    pub file: usize,
    /// Byte offset of row 0 in that file.
    pub offset: u64,
    /// Bytes between consecutive rows.
    pub stride: u64,
}

impl Column {
    /// True when the values are packed one after another.
    pub fn is_contiguous(&self) -> bool {
        self.stride == self.dtype.size() as u64
    }
}

/// A dataset: named columns of one row count, backed by memory-mapped files.
///
/// `Dataset` is `Send + Sync`; queries borrow it and can run from several threads.
#[derive(Debug, Clone)]
pub struct Dataset {
    files: Arc<Vec<MappedFile>>,
    columns: Vec<Column>,
    rows: u64,
}

impl Dataset {
    /// Opens one `.safetensors` or `.npy` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        Dataset::open_many(&[path.as_ref()], FileKind::Auto)
    }

    /// Opens several files of one row count as one dataset, side by side.
    /// Column names must be unique across the files.
    pub fn open_many<P: AsRef<Path>>(paths: &[P], kind: FileKind) -> Result<Dataset> {
        if paths.is_empty() {
            return Err(Error::plan("no input file given"));
        }
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            files.push(map_file(p.as_ref(), kind)?);
        }
        // The row count is the first file's that has columns: a file without any (`{}`, or
        // only `[N, 0]` tensors) adds nothing and may stand anywhere in the list (it made
        // `empty.safetensors a.safetensors` an error and the reverse order not).
        let first = files.iter().find(|f| !f.parsed.columns.is_empty()).unwrap_or(&files[0]);
        let rows = first.parsed.rows;
        let mut columns = Vec::new();
        let mut seen = HashSet::new();
        for (i, f) in files.iter().enumerate() {
            if f.parsed.rows != rows && !f.parsed.columns.is_empty() {
                return Err(Error::format(
                    &f.path,
                    format!("has {} rows but {} has {rows}: files side by side need one row count", f.parsed.rows, first.path.display()),
                ));
            }
            for c in &f.parsed.columns {
                if !seen.insert(c.name.clone()) {
                    return Err(Error::format(&f.path, format!("column `{}` appears twice in the dataset", c.name)));
                }
                columns.push(Column { name: c.name.clone(), dtype: c.dtype, file: i, offset: c.offset, stride: c.stride });
            }
        }
        let rows = if columns.is_empty() { 0 } else { rows };
        Ok(Dataset { files: Arc::new(files), columns, rows })
    }

    /// Number of rows.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The columns in file order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The mapped files in the order given.
    pub fn files(&self) -> &[MappedFile] {
        &self.files
    }

    /// Looks a column up by name.
    pub fn column(&self, name: &str) -> Result<&Column> {
        self.column_index(name).map(|i| &self.columns[i])
    }

    /// Index of a column by name, or an error listing the columns.
    pub fn column_index(&self, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c.name == name).ok_or_else(|| {
            let mut names: Vec<&str> = self.columns.iter().take(20).map(|c| c.name.as_str()).collect();
            if self.columns.len() > 20 {
                names.push("...");
            }
            Error::plan(format!("unknown column `{name}` (columns: {})", names.join(", ")))
        })
    }

    /// Total bytes of the values of the given columns.
    pub fn column_bytes(&self, columns: &[usize]) -> u64 {
        columns.iter().map(|&c| self.columns[c].dtype.size() as u64 * self.rows).sum()
    }

    /// Bytes of column `c` for rows `[r0, r1)`: from row r0's value to the end of row r1-1's.
    pub(crate) fn column_span(&self, c: usize, r0: u64, r1: u64) -> &[u8] {
        let col = &self.columns[c];
        let bytes = self.files[col.file].bytes();
        if r1 <= r0 {
            return &[];
        }
        // The parsers checked that every row of every column lies inside the file.
        let start = (col.offset + r0 * col.stride) as usize;
        let end = (col.offset + (r1 - 1) * col.stride) as usize + col.dtype.size();
        &bytes[start..end]
    }

    /// Reads rows `[r0, r1)` of the columns ahead of use and maps them
    /// (`MADV_POPULATE_READ`; the exec loop calls this from a helper thread).
    ///
    /// Populating goes through the page-fault path, whose readahead reads whole huge folios
    /// in a `MADV_HUGEPAGE` mapping, and leaves the pages mapped, so compute threads take no
    /// faults. `MADV_WILLNEED` (the fallback on kernels before 5.14) fills the page cache
    /// with 4 KiB pages, each faulted in later: after a cold read of 537 MB, stats passes
    /// took 0.059–0.067 s that way and take 0.028–0.033 s now (2 cores, ext4).
    pub(crate) fn read_ahead(&self, columns: &[usize], r0: u64, r1: u64) {
        let ranges = self.merged_ranges(columns, |c| self.rows_range(c, r0, r1));
        for (file, start, end) in ranges {
            let Some(m) = self.files[file].map.as_ref() else { continue };
            #[cfg(target_os = "linux")]
            if m.advise_range(Advice::PopulateRead, start, end - start).is_ok() {
                continue;
            }
            let _ = m.advise_range(Advice::WillNeed, start, end - start);
        }
    }

    /// Releases the mapped pages of rows `[r0, r1)` (they stay in the page cache), so
    /// that resident memory does not grow with the file.
    ///
    /// Only whole 2 MiB regions are released: from the region where the previous tile's
    /// release stopped (the one holding the end of row r0 - 1; for r0 = 0, the one holding
    /// row 0) to the region holding the end of row r1 - 1, exclusive, or to that end itself
    /// when r1 is the last row. Consecutive tiles thus release adjacent ranges, whatever the
    /// column's stride. Releasing part of a region that a huge page maps splits the mapping
    /// into 512 small ones, which the next tile's read-ahead and release then walk one by
    /// one (page-table work in every tile at each column's two ends). Bytes around a column
    /// (another column's rows) may be released early; reading them faults them back in.
    pub(crate) fn done_with(&self, columns: &[usize], r0: u64, r1: u64) {
        let ranges = self.merged_ranges(columns, |c| {
            let col = &self.columns[c];
            let map = self.files[col.file].map.as_ref()?;
            release_range(col, r0, r1, self.rows, map.len())
        });
        for (file, start, end) in ranges {
            let Some(map) = self.files[file].map.as_ref() else { continue };
            // SAFETY: the mapping is read-only and shared; DONTNEED only drops our page
            // table entries, and later reads fault the same file pages back in.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
        }
    }

    /// Bytes of the files that each row of `columns` spans: a contiguous column's value, and
    /// once per row-major matrix its row (its columns' values lie within one stride), however
    /// few of its columns are read: a tile of rows maps that many bytes.
    pub(crate) fn mapped_bytes_per_row(&self, columns: &[usize]) -> u64 {
        let mut strided: Vec<(usize, u64, u64)> = Vec::new();
        let mut bytes = 0;
        for &c in columns {
            let col = &self.columns[c];
            if col.is_contiguous() {
                bytes += col.stride;
            } else {
                strided.push((col.file, col.stride, col.offset));
            }
        }
        strided.sort_unstable();
        strided.dedup();
        // Columns of one file and stride whose offsets lie within a stride of the first of
        // their run belong to one matrix (or overlap as much).
        let mut run: Option<(usize, u64, u64)> = None;
        for (file, stride, offset) in strided {
            if run.is_none_or(|(f, s, first)| f != file || s != stride || offset >= first + stride) {
                bytes += stride;
                run = Some((file, stride, offset));
            }
        }
        bytes
    }

    /// The whole pages of column `c`'s mapping that rows `[r0, r1)` span.
    fn rows_range(&self, c: usize, r0: u64, r1: u64) -> Option<(usize, usize)> {
        const PAGE: usize = 4096;
        let col = &self.columns[c];
        let map = self.files[col.file].map.as_ref()?;
        if r1 <= r0 {
            return None;
        }
        let start = (col.offset + r0 * col.stride) as usize;
        let end = ((col.offset + (r1 - 1) * col.stride) as usize + col.dtype.size()).min(map.len());
        Some((start / PAGE * PAGE, (end.div_ceil(PAGE) * PAGE).min(map.len())))
    }

    /// The byte ranges of `columns` (from `range`), per file, with those that overlap or
    /// touch merged: the columns of a row-major matrix span the same pages, and advising
    /// them column by column made the pager walk a [N, 768] matrix's tile 768 times (it fell
    /// behind, and the pages it was to release stayed mapped: the whole file).
    fn merged_ranges(&self, columns: &[usize], range: impl Fn(usize) -> Option<(usize, usize)>) -> Vec<(usize, usize, usize)> {
        let mut ranges: Vec<(usize, usize, usize)> =
            columns.iter().filter_map(|&c| range(c).map(|(start, end)| (self.columns[c].file, start, end))).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize, usize)> = Vec::with_capacity(ranges.len());
        for (file, start, end) in ranges {
            match merged.last_mut() {
                Some(last) if last.0 == file && start <= last.2 => last.2 = last.2.max(end),
                _ => merged.push((file, start, end)),
            }
        }
        merged
    }

    /// Fails unless rows `[r0, r1)` of column `c` hold values the kernels read as the file
    /// means them (called per tile by `exec` for the columns that need it):
    /// - a BOOL only the bytes 0 and 1: numpy and PyTorch read any other byte as true,
    ///   while the kernels would count its value (a sum of 2 for one true row);
    /// - a U64 that expressions read only values up to i64::MAX: expressions compute
    ///   integers in i64, where larger ones would turn into i64::MAX (a filter comparing the
    ///   wrong value, a `--with` copy writing it).
    ///
    /// Such a file is refused, naming the column and the first such row.
    pub(crate) fn check_values(&self, c: usize, r0: u64, r1: u64) -> Result<()> {
        let col = &self.columns[c];
        // The byte of each value that shows a bad one, and the largest it may be (little-
        // endian: a u64's top bit is in its byte 7).
        let (at, most) = match col.dtype {
            DType::Bool => (0, 1u8),
            DType::U64 => (7, 0x7f),
            _ => return Ok(()),
        };
        let span = self.column_span(c, r0, r1);
        let stride = col.stride as usize;
        let size = col.dtype.size();
        // OR of the bytes (vectorizes for contiguous columns): a bit above `most`'s shows one.
        let any_bad = if col.is_contiguous() {
            span.chunks_exact(size).fold(0u8, |m, v| m | v[at]) > most
        } else {
            span.iter().skip(at).step_by(stride).any(|&b| b > most)
        };
        if !any_bad {
            return Ok(());
        }
        let i = (0..(r1 - r0) as usize).find(|&i| span[i * stride + at] > most).unwrap_or(0);
        let value = &span[i * stride..][..size];
        let message = match col.dtype {
            DType::Bool => format!("column `{}` holds byte {} at row {}; a BOOL is 0 or 1", col.name, value[0], r0 + i as u64),
            _ => format!(
                "column `{}` holds {} at row {}, above i64::MAX: expressions (--where, --with) compute integers in i64 and cannot read it",
                col.name,
                u64::from_le_bytes(value.try_into().unwrap_or([0; 8])),
                r0 + i as u64
            ),
        };
        Err(Error::format(&self.files[col.file].path, message))
    }

    /// Fails if a read faulted because an input file shrank while mapped (the faulting
    /// pages read as zeros, so results would be wrong).
    pub(crate) fn check_faults(&self) -> Result<()> {
        for f in self.files.iter() {
            if let Some(offset) = f.watch.as_ref().and_then(|w| w.fault()) {
                return Err(Error::io(
                    &f.path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file was truncated while being read (no data at byte {offset})"),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that no input file changed size or modification time since it was opened.
    pub fn check_unchanged(&self) -> Result<()> {
        self.check_faults()?;
        for f in self.files.iter() {
            let meta = std::fs::metadata(&f.path).map_err(|e| Error::io(&f.path, e))?;
            if meta.len() != f.len || meta.modified().ok() != f.modified {
                return Err(Error::format(&f.path, "the file changed while it was being read; results would be wrong"));
            }
        }
        Ok(())
    }
}

/// The bytes `[start, end)` of a mapping of `map_len` bytes that `Dataset::done_with`
/// releases for rows `[r0, r1)` of a column of a `rows`-row dataset, if any.
fn release_range(col: &Column, r0: u64, r1: u64, rows: u64, map_len: usize) -> Option<(usize, usize)> {
    const HUGE: u64 = 2 << 20;
    const PAGE: u64 = 4096;
    if r1 <= r0 {
        return None;
    }
    // Byte just past row r's value.
    let end_of = |r: u64| col.offset + r * col.stride + col.dtype.size() as u64;
    let from = if r0 == 0 { col.offset } else { end_of(r0 - 1) };
    let start = from / HUGE * HUGE;
    let end = if r1 >= rows { end_of(r1 - 1).div_ceil(PAGE) * PAGE } else { end_of(r1 - 1) / HUGE * HUGE };
    let end = (end as usize).min(map_len);
    (end > start as usize).then_some((start as usize, end))
}

fn map_file(path: &Path, kind: FileKind) -> Result<MappedFile> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(path, "not a regular file"));
    }
    let len = meta.len();
    let map = if len == 0 {
        None
    } else {
        // SAFETY: the mapping is read-only. A file truncated by another process while
        // mapped would fault on access; `check_unchanged` reports changes after a run.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let _ = map.advise(Advice::Sequential);
        // Huge pages where the file system offers them (ext4 and xfs with large folios,
        // e.g. Linux 6.18 here; tmpfs): a cold read fills the page cache in 2 MiB folios,
        // and mapping them costs one page-table entry per 2 MiB instead of 512. Only advice.
        #[cfg(target_os = "linux")]
        let _ = map.advise(Advice::HugePage);
        Some(map)
    };
    let bytes = map.as_deref().unwrap_or(&[]);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if len == 0 {
        return Err(Error::format(path, "empty file"));
    }
    let parsed = match kind {
        FileKind::Raw { dtype, cols } => raw::parse_raw(path, &stem, len, dtype, cols)?,
        FileKind::Auto => match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("safetensors") => safetensors::parse_safetensors(path, bytes)?,
            Some("npy") => npy::parse_npy(path, &stem, bytes)?,
            _ if bytes.starts_with(b"\x93NUMPY") => npy::parse_npy(path, &stem, bytes)?,
            _ => {
                return Err(Error::format(
                    path,
                    "unknown format: expected a .safetensors or .npy file (use --raw DTYPE:COLS for headerless binary)",
                ));
            }
        },
    };
    let watch = map.as_ref().map(|m| sigbus::Watch::new(m.as_ptr(), m.len()));
    Ok(MappedFile { path: path.to_path_buf(), map, len, modified: meta.modified().ok(), parsed, watch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Rng, test_seed};

    /// Consecutive tiles release adjacent whole 2 MiB regions, and together everything from
    /// the region holding row 0 to the page after the last row, for any stride (a strided
    /// column's rows may straddle a region boundary between two tiles) and tile split.
    #[test]
    fn page_releases_cover_the_column_in_whole_huge_pages() {
        const HUGE: usize = 2 << 20;
        let mut rng = Rng::new(test_seed());
        for _ in 0..2000 {
            let dtype = [DType::U8, DType::F16, DType::F32, DType::F64][(rng.next_u64() % 4) as usize];
            let size = dtype.size() as u64;
            let stride = size * [1, 1, 3, 1024, 1025, 4096, 600_000][(rng.next_u64() % 7) as usize];
            let rows = 1 + rng.next_u64() % 40_000;
            let offset = rng.next_u64() % (8 << 20);
            let col = Column { name: "c".into(), dtype, file: 0, offset, stride };
            let data_end = (offset + (rows - 1) * stride + size) as usize;
            // The file may extend past the column (other columns after it).
            let map_len = data_end + (rng.next_u64() % (4 << 20)) as usize;
            let mut r0 = 0;
            let mut released = offset as usize / HUGE * HUGE;
            while r0 < rows {
                let r1 = (r0 + 1 + rng.next_u64() % 9000).min(rows);
                if let Some((start, end)) = release_range(&col, r0, r1, rows, map_len) {
                    let what = format!("{dtype} stride {stride} offset {offset} rows {rows}: tile {r0}..{r1}");
                    assert_eq!(start, released, "{what}: starts where the last release stopped");
                    assert!(start.is_multiple_of(HUGE) && end <= map_len, "{what}: [{start}, {end})");
                    assert!(end.is_multiple_of(HUGE) || r1 == rows, "{what}: only the last tile ends inside a huge page");
                    released = end;
                }
                r0 = r1;
            }
            assert_eq!(released, (data_end.div_ceil(4096) * 4096).min(map_len), "stride {stride} rows {rows}: released to the end");
        }
    }
}
