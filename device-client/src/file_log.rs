//! [`FileLog`]: a [`RecordLog`] in a file, for machines with a filesystem (and `blepay device`).
//!
//! Every append is written and `fsync`ed (`sync_data`) before it returns. Compaction writes a new
//! file next to it, syncs it, renames it over the old one and syncs the directory, so a power loss
//! leaves either the old or the new log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::vec::Vec;

use crate::log::{LogError, RecordLog, decode_log, encode_record};

/// A failure of the file-backed log.
#[derive(Debug, thiserror::Error)]
pub enum FileLogError {
    /// The filesystem failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The record could not be framed.
    #[error(transparent)]
    Record(#[from] LogError),
}

/// An append-only record log in one file.
#[derive(Debug)]
pub struct FileLog {
    path: PathBuf,
    file: File,
    len: usize,
}

impl FileLog {
    /// Open (or create) the log at `path`. Call [`RecordLog::recover`] before appending.
    ///
    /// # Errors
    /// The file cannot be opened or created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileLogError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| FileLogError::Io {
                path: path.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| FileLogError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok(Self { path, file, len })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl Fn(std::io::Error) -> FileLogError + '_ {
        |source| FileLogError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl RecordLog for FileLog {
    type Error = FileLogError;

    fn append(&mut self, record: &[u8]) -> Result<(), FileLogError> {
        let framed = encode_record(record)?;
        let at = u64::try_from(self.len).unwrap_or(u64::MAX);
        let io = |source| FileLogError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(at)).map_err(io)?;
        self.file.write_all(&framed).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.len = self.len.saturating_add(framed.len());
        Ok(())
    }

    fn recover(&mut self) -> Result<Vec<Vec<u8>>, FileLogError> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0)).map_err(self.io())?;
        self.file.read_to_end(&mut bytes).map_err(self.io())?;
        let (records, valid) = decode_log(&bytes);
        let records: Vec<Vec<u8>> = records.into_iter().map(<[u8]>::to_vec).collect();
        if valid != bytes.len() {
            let valid_u64 = u64::try_from(valid).unwrap_or(u64::MAX);
            self.file.set_len(valid_u64).map_err(self.io())?;
            self.file.sync_all().map_err(self.io())?;
        }
        self.len = valid;
        Ok(records)
    }

    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), FileLogError> {
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend_from_slice(&encode_record(r)?);
        }
        let mut tmp_name = self.path.clone().into_os_string();
        tmp_name.push(".compact");
        let tmp = PathBuf::from(tmp_name);
        let tmp_io = |source| FileLogError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = File::create(&tmp).map_err(tmp_io)?;
        f.write_all(&bytes).map_err(tmp_io)?;
        f.sync_all().map_err(tmp_io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(self.io())?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable; not every platform can open a directory, so best effort.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(self.io())?;
        self.len = bytes.len();
        Ok(())
    }

    fn used_bytes(&self) -> usize {
        self.len
    }
}
