//! NDJSON history: one JSON event per line, read through the decoder.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{Decoder, Encoding, Limits};
use crate::event::files::{io, BadRow, FileError, Record};

pub(super) struct NdjsonSource {
    path: PathBuf,
    reader: BufReader<File>,
    decoder: Decoder,
    line: u64,
    buf: Vec<u8>,
}

impl NdjsonSource {
    pub(super) fn new(path: &Path, file: File, limits: Limits) -> Self {
        NdjsonSource {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            decoder: Decoder::new(Encoding::Json, limits),
            line: 0,
            buf: Vec::new(),
        }
    }

    pub(super) fn next(&mut self, bytes: &mut u64) -> Option<Result<Record, FileError>> {
        loop {
            self.buf.clear();
            let n = match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => return Some(Err(io(&self.path)(e))),
            };
            *bytes += n as u64;
            self.line += 1;
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            return Some(Ok(match self.decoder.decode(None, Some(text), 0) {
                Ok((e, _)) => Record::Event(e),
                Err(rejection) => Record::Bad(BadRow {
                    location: format!("{}:{}", self.path.display(), self.line),
                    rejection,
                }),
            }));
        }
    }
}
