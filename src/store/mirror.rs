//! The store's second copy: every provider's record, in two small
//! checksummed files beside sled's directory (`mirror-a`, `mirror-b`). Each
//! write replaces the older of the two in place and is fsynced, so a power
//! cut can tear at most the copy being written while the other still holds
//! the previous state — the one that was last served. sled's log has no such
//! guarantee: a write torn on the card can leave it opening older records,
//! or not at all (see docs in README, "What survives a power cut").
//!
//! Layout of a file: `SAAMIRR2` (8 bytes), sequence number (u64 LE),
//! payload length (u32 LE), CRC-32 of the sequence, length and payload
//! (u32 LE), then the payload: for each provider, its name's length (u32
//! LE), the name, the record's length (u32 LE) and the record's bytes
//! exactly as sled holds them (sealed, or plain JSON without a store key).
//! A file shrinks to its copy when written, so no bytes of an earlier
//! copy are left behind. `SAAMIRR1` files (an older agent's: the payload a
//! JSON object of plain records) are still read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SAAMIRR2";
const MAGIC_V1: &[u8; 8] = b"SAAMIRR1";
const HEADER: usize = 24;
/// Far above any real state (a few KiB per provider); a length field
/// beyond it is damage, not a reason to allocate.
const MAX_PAYLOAD: u64 = 64 << 20;
pub const NAMES: [&str; 2] = ["mirror-a", "mirror-b"];

/// Each provider's record as stored (sealed or plain JSON), by name.
pub type Raw = BTreeMap<String, Vec<u8>>;

/// One readable copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    pub seq: u64,
    pub records: Raw,
    /// Which file it came from.
    pub path: PathBuf,
}

pub struct Mirror {
    files: [File; 2],
    paths: [PathBuf; 2],
    /// The file holding the newest readable copy; the next write goes to
    /// the other one.
    newest: Option<usize>,
}

impl Mirror {
    /// Opens (creating when missing, 0600) both files in `dir` and reads
    /// the newest readable copy. New files are made durable in `dir`.
    pub fn open(dir: &Path) -> io::Result<(Mirror, Option<Copy>)> {
        let mut created = false;
        let mut open = |name: &str| {
            let path = dir.join(name);
            let existed = path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                })?;
            created |= !existed;
            Ok::<_, io::Error>((file, path))
        };
        let (a, pa) = open(NAMES[0])?;
        let (b, pb) = open(NAMES[1])?;
        if created {
            crate::durable::sync_dir(dir)?;
        }
        let copies = [read(&a), read(&b)];
        let newest = match (&copies[0], &copies[1]) {
            (Some(x), Some(y)) => Some(if y.0 > x.0 { 1 } else { 0 }),
            (Some(_), None) => Some(0),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        };
        let paths = [pa, pb];
        let copy = newest.and_then(|i| {
            copies[i].clone().map(|(seq, records)| Copy {
                seq,
                records,
                path: paths[i].clone(),
            })
        });
        Ok((
            Mirror {
                files: [a, b],
                paths,
                newest,
            },
            copy,
        ))
    }

    /// Writes `records` as copy `seq` over the older file and fsyncs it.
    pub fn write(&mut self, seq: u64, records: &Raw) -> io::Result<()> {
        let i = match self.newest {
            Some(n) => 1 - n,
            None => 0,
        };
        let bytes = encode(seq, records);
        let f = &self.files[i];
        let result = f
            .write_all_at(&bytes, 0)
            .and_then(|_| match f.metadata()?.len() > bytes.len() as u64 {
                // What an earlier, longer copy left must not outlive it
                // (it may be what a rewrite of the store is removing).
                true => f.set_len(bytes.len() as u64),
                false => Ok(()),
            })
            .and_then(|_| f.sync_data());
        match result {
            Ok(()) => {
                self.newest = Some(i);
                Ok(())
            }
            Err(e) => {
                // Torn or not, this file no longer holds a copy to rely on;
                // the next write goes to it again, keeping the other.
                self.newest = Some(1 - i);
                Err(io::Error::new(
                    e.kind(),
                    format!("writing {}: {e}", self.paths[i].display()),
                ))
            }
        }
    }

    /// Writes `records` into both files (copies `seq` and `seq + 1`),
    /// leaving no earlier copy in either; returns the last sequence number.
    pub fn write_both(&mut self, seq: u64, records: &Raw) -> io::Result<u64> {
        self.write(seq, records)?;
        self.write(seq + 1, records)?;
        Ok(seq + 1)
    }
}

pub fn encode(seq: u64, records: &Raw) -> Vec<u8> {
    let mut payload = Vec::new();
    for (name, bytes) in records {
        payload.extend_from_slice(&(name.len() as u32).to_le_bytes());
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[8..20]);
    crc.update(&payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The copy in `bytes`, if it is whole.
pub fn decode(bytes: &[u8]) -> Option<(u64, Raw)> {
    if bytes.len() < HEADER || (&bytes[..8] != MAGIC && &bytes[..8] != MAGIC_V1) {
        return None;
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(bytes[16..20].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[20..24].try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[8..20]);
    h.update(payload);
    if h.finalize() != crc {
        return None;
    }
    let records = if &bytes[..8] == MAGIC_V1 {
        // Each record's JSON as its own bytes: a plain record.
        let v1: BTreeMap<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
        v1.into_iter()
            .map(|(name, v)| (name, serde_json::to_vec(&v).expect("JSON serialises")))
            .collect()
    } else {
        entries(payload)?
    };
    Some((seq, records))
}

/// The entries of a version 2 payload; `None` if they do not fill it exactly.
fn entries(mut payload: &[u8]) -> Option<Raw> {
    fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let value = rest.get(4..4usize.checked_add(len)?)?;
        *rest = &rest[4 + len..];
        Some(value)
    }
    let mut out = Raw::new();
    while !payload.is_empty() {
        let name = String::from_utf8(field(&mut payload)?.to_vec()).ok()?;
        let value = field(&mut payload)?.to_vec();
        out.insert(name, value);
    }
    Some(out)
}

fn read(f: &File) -> Option<(u64, Raw)> {
    let len = f.metadata().ok()?.len();
    if len < HEADER as u64 || len > HEADER as u64 + MAX_PAYLOAD {
        // Oversized: read just the header's worth and let the length
        // check refuse it.
        let mut head = [0u8; HEADER];
        f.read_exact_at(&mut head, 0).ok()?;
        return decode(&head);
    }
    let mut bytes = vec![0u8; len as usize];
    f.read_exact_at(&mut bytes, 0).ok()?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(tag: &str) -> Raw {
        let mut m = Raw::new();
        m.insert(
            "a".to_owned(),
            format!("{{\"identity\":{tag:?}}}").into_bytes(),
        );
        m.insert("b".to_owned(), b"SAASEAL1\0\x01 sealed bytes".to_vec());
        m
    }

    #[test]
    fn every_torn_or_flipped_copy_is_refused() {
        let bytes = encode(7, &records("x"));
        assert_eq!(decode(&bytes), Some((7, records("x"))));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert_eq!(decode(&b), None, "flip at {i}");
        }
        // Left-over bytes after a copy (an older agent left them) are ignored.
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"stale tail");
        assert_eq!(decode(&longer), Some((7, records("x"))));
    }

    #[test]
    fn an_older_agents_copy_reads_as_plain_records() {
        let payload = br#"{"a":{"identity":"x","token":null}}"#;
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        v1.extend_from_slice(&3u64.to_le_bytes());
        v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&v1[8..20]);
        crc.update(payload);
        v1.extend_from_slice(&crc.finalize().to_le_bytes());
        v1.extend_from_slice(payload);
        let (seq, raw) = decode(&v1).unwrap();
        assert_eq!(seq, 3);
        let a: serde_json::Value = serde_json::from_slice(&raw["a"]).unwrap();
        assert_eq!(a["identity"], "x");
    }

    #[test]
    fn a_shorter_copy_leaves_nothing_of_the_longer_one() {
        let dir = std::env::temp_dir().join(format!("saa-mirror-{}", crate::rand::hex(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut m, _) = Mirror::open(&dir).unwrap();
        let mut long = records("x");
        long.insert("c".to_owned(), b"a long record that goes away".to_vec());
        m.write_both(1, &long).unwrap();
        m.write_both(3, &records("x")).unwrap();
        for name in NAMES {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(bytes.len(), encode(1, &records("x")).len(), "{name}");
            assert!(!String::from_utf8_lossy(&bytes).contains("goes away"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_alternate_and_the_newest_whole_copy_wins() {
        let dir = std::env::temp_dir().join(format!("saa-mirror-{}", crate::rand::hex(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut m, copy) = Mirror::open(&dir).unwrap();
        assert_eq!(copy, None);
        m.write(1, &records("one")).unwrap();
        m.write(2, &records("two")).unwrap();
        m.write(3, &records("three")).unwrap();
        drop(m);
        let (_, copy) = Mirror::open(&dir).unwrap();
        let copy = copy.unwrap();
        assert_eq!((copy.seq, copy.records), (3, records("three")));
        // Tear the newest copy (mirror-a holds 1 and 3): the other holds 2.
        assert_eq!(copy.path, dir.join(NAMES[0]));
        let f = OpenOptions::new().write(true).open(&copy.path).unwrap();
        f.write_all_at(b"\0\0\0\0", 30).unwrap();
        let (mut m, copy) = Mirror::open(&dir).unwrap();
        assert_eq!(copy.map(|c| c.seq), Some(2));
        // The next write goes over the torn one, keeping copy 2.
        m.write(4, &records("four")).unwrap();
        let (_, copy) = Mirror::open(&dir).unwrap();
        assert_eq!(copy.map(|c| (c.seq, c.path)), Some((4, dir.join(NAMES[0]))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
