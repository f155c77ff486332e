//! Where the file data of the layers is kept until the archive is
//! written: each layer's file (an uncompressed layer's data is read where
//! it lies), and the spool, an unnamed temporary file holding the data of
//! compressed layers. A [`DataRef`] names a range of one of them.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::entry::{DataRef, LayerError};
use super::ImageError;

/// The source id of the spool file.
const SPOOL: u32 = u32::MAX;

/// The files file data is read from when writing: each layer's file, and
/// the spool, an unnamed temporary file holding compressed layers' data.
pub(crate) struct Sources {
    layers: Vec<(File, PathBuf)>,
    spool_dir: PathBuf,
    /// The spool's name in messages.
    spool_name: PathBuf,
    spool: Option<BufWriter<File>>,
    spool_len: u64,
    spool_file: Option<File>,
}

impl Sources {
    /// Sources whose spool, when needed, is made in `spool_dir`.
    pub(crate) fn new(spool_dir: &Path) -> Self {
        Sources {
            layers: Vec::new(),
            spool_dir: spool_dir.to_path_buf(),
            spool_name: spool_dir.join("(temporary file)"),
            spool: None,
            spool_len: 0,
            spool_file: None,
        }
    }

    /// The id the next layer file will get.
    pub(crate) fn next_layer_id(&self) -> u32 {
        self.layers.len() as u32
    }

    pub(crate) fn add_layer_file(&mut self, file: File, path: &Path) {
        self.layers.push((file, path.to_path_buf()));
    }

    /// Copies exactly `len` bytes of `data` into the spool.
    pub(crate) fn spool(
        &mut self,
        data: &mut impl Read,
        len: u64,
        name: &dyn Fn() -> String,
    ) -> Result<DataRef, LayerError> {
        let spool = match &mut self.spool {
            Some(spool) => spool,
            None => {
                let file = tempfile::tempfile_in(&self.spool_dir).map_err(LayerError::Spool)?;
                self.spool.insert(BufWriter::with_capacity(1 << 20, file))
            }
        };
        let offset = self.spool_len;
        let mut buf = [0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => return Err(LayerError::Truncated { entry: name() }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LayerError::Corrupt(e)),
            };
            spool.write_all(&buf[..n]).map_err(LayerError::Spool)?;
            left -= n as u64;
        }
        self.spool_len += len;
        Ok(DataRef {
            source: SPOOL,
            offset,
            len,
        })
    }

    /// The file `data` is in (its data at `data.offset`), and its name.
    pub(crate) fn open(&mut self, data: &DataRef) -> Result<(&File, &Path), ImageError> {
        if data.source == SPOOL {
            let name = &self.spool_name;
            if let Some(spool) = self.spool.take() {
                let file = spool.into_inner().map_err(|e| ImageError::Write {
                    path: name.clone(),
                    source: e.into_error(),
                })?;
                self.spool_file = Some(file);
            }
            let file = self.spool_file.as_ref().ok_or_else(|| {
                ImageError::read(name, io::Error::other("file data was never spooled"))
            })?;
            Ok((file, name))
        } else {
            let (file, path) = &self.layers[data.source as usize];
            Ok((file, path))
        }
    }
}
