//! Compression detected from magic bytes, and readers that hash or copy
//! what passes through them.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2: &[u8] = b"BZh";

/// Names the compression of a stream from its first bytes.
pub(crate) fn sniff(head: &[u8]) -> io::Result<Compression> {
    if head.starts_with(GZIP) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD) {
        Ok(Compression::Zstd)
    } else if head.starts_with(XZ) || head.starts_with(BZIP2) {
        let name = if head.starts_with(XZ) { "xz" } else { "bzip2" };
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} compression is not supported (use gzip, zstd or none)"),
        ))
    } else {
        Ok(Compression::None)
    }
}

/// Wraps `r` in the decompressor its magic bytes call for.
pub(crate) fn decompress<'a>(
    mut r: impl Read + 'a,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = sniff(&head[..n])?;
    let whole = io::Cursor::new(head[..n].to_vec()).chain(r);
    Ok(match kind {
        Compression::None => (kind, Box::new(whole)),
        // Multi-member: `cat a.gz b.gz` is one valid gzip stream.
        Compression::Gzip => (kind, Box::new(flate2::read::MultiGzDecoder::new(whole))),
        Compression::Zstd => (kind, Box::new(zstd::stream::read::Decoder::new(whole)?)),
    })
}

/// Hashes (sha256) and counts every byte read through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads to the end so the digest covers the whole stream (a tar reader
    /// stops at the end-of-archive blocks, before any padding after them).
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    /// `("sha256:<hex>", bytes read)`.
    pub(crate) fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        )
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes (sha256) and counts every byte written through it.
pub(crate) struct HashWriter<W> {
    pub(crate) inner: W,
    hasher: Sha256,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// `("sha256:<hex>", writer)`.
    pub(crate) fn finish(self) -> (String, W) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.inner,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies every byte read through it into a writer.
pub(crate) struct Tee<R, W> {
    pub(crate) inner: R,
    pub(crate) sink: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `"sha256:<hex>"` of a byte string.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_decompresses() {
        let data = b"hello tar".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        for (input, want) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
            (b"ab".to_vec(), Compression::None),
        ] {
            let (kind, mut r) = decompress(&input[..]).unwrap();
            assert_eq!(kind, want);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            if want != Compression::None || input.len() > 2 {
                assert_eq!(out, data);
            } else {
                assert_eq!(out, b"ab");
            }
        }
        let err = decompress(XZ).err().unwrap().to_string();
        assert!(err.contains("xz"), "{err}");
    }

    #[test]
    fn hash_reader_matches_sha256() {
        let mut r = HashReader::new(&b"abc"[..]);
        r.drain().unwrap();
        let (d, n) = r.finish();
        assert_eq!(n, 3);
        assert_eq!(d, sha256_digest(b"abc"));
        assert_eq!(
            d,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
