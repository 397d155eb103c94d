//! Just enough tar for image archives: an index of a tar file's regular files (ustar, PAX and
//! GNU long names), and a streaming ustar writer.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};

const BLOCK: u64 = 512;

/// Where each regular file's data lies in a tar file: name -> (offset, size).
pub fn index<F: Read + Seek>(file: &mut F) -> Result<HashMap<String, (u64, u64)>, String> {
    let len = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    let mut pax_size: Option<u64> = None;
    let mut header = [0u8; 512];
    loop {
        file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        match file.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
        if header.iter().all(|&b| b == 0) {
            break;
        }
        if !checksum_ok(&header) {
            return Err(format!(
                "not a tar archive (bad header checksum at byte {at})"
            ));
        }
        let mut size = number(&header[124..136]).ok_or("bad size field in a tar header")?;
        if let Some(s) = pax_size.take() {
            size = s;
        }
        let data = at + BLOCK;
        // Checked: a base-256 size near 2^64 wrapped this sum, passed the check, and (debug
        // builds aside) could send `at` back to an earlier header, looping for ever.
        if data.checked_add(size).is_none_or(|end| end > len) {
            return Err(format!(
                "truncated archive: an entry needs {size} bytes at {data}, the file has {len}"
            ));
        }
        let kind = header[156];
        match kind {
            b'x' | b'L' => {
                if size > 1 << 20 {
                    return Err("oversized tar extended header".into());
                }
                let mut ext = vec![0u8; size as usize];
                file.read_exact(&mut ext).map_err(|e| e.to_string())?;
                if kind == b'L' {
                    let end = ext.iter().position(|&b| b == 0).unwrap_or(ext.len());
                    long_name = Some(String::from_utf8_lossy(&ext[..end]).into_owned());
                } else {
                    for (k, v) in pax_records(&ext) {
                        match k.as_str() {
                            "path" => long_name = Some(v),
                            "size" => pax_size = v.parse().ok(),
                            _ => {}
                        }
                    }
                }
            }
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or_else(|| ustar_name(&header));
                let name = name.trim_start_matches("./").to_owned();
                out.insert(name, (data, size));
            }
            _ => {
                long_name = None;
            }
        }
        at = data + size.div_ceil(BLOCK) * BLOCK;
    }
    Ok(out)
}

fn checksum_ok(h: &[u8; 512]) -> bool {
    let stored = number(&h[148..156]);
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    stored == Some(sum)
}

/// An octal field, or GNU base-256 for large values.
fn number(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)? | u64::from(b);
        }
        return Some(v);
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn ustar_name(h: &[u8; 512]) -> String {
    let field = |f: &[u8]| {
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    let name = field(&h[0..100]);
    let prefix = if &h[257..262] == b"ustar" {
        field(&h[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// `LEN key=value\n` records.
fn pax_records(mut b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(sp) = b.iter().position(|&c| c == b' ') {
        let Some(len) = std::str::from_utf8(&b[..sp])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > b.len() {
            break;
        }
        let rec = String::from_utf8_lossy(&b[sp + 1..len - 1]).into_owned();
        if let Some((k, v)) = rec.split_once('=') {
            out.push((k.to_owned(), v.to_owned()));
        }
        b = &b[len..];
    }
    out
}

/// Writes a ustar archive entry by entry.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// A writer onto `out`.
    pub fn new(out: W) -> Writer<W> {
        Writer { out }
    }

    /// A directory entry.
    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.header(name, 0, b'5', 0o755)
    }

    /// The header of a regular file of `size` bytes; its data follows through `data` and
    /// `pad`.
    pub fn file_header(&mut self, name: &str, size: u64) -> std::io::Result<()> {
        self.header(name, size, b'0', 0o644)
    }

    /// File data.
    pub fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Pads a file of `size` bytes to the block size.
    pub fn pad(&mut self, size: u64) -> std::io::Result<()> {
        let rem = (size % BLOCK) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// A whole small file.
    pub fn file(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.file_header(name, bytes.len() as u64)?;
        self.data(bytes)?;
        self.pad(bytes.len() as u64)
    }

    /// The end-of-archive blocks; returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, name: &str, size: u64, kind: u8, mode: u32) -> std::io::Result<()> {
        // Our names (blobs/sha256/<64 hex>, index.json) fit the 100-byte field.
        if name.len() >= 100 {
            return Err(std::io::Error::other(format!("tar name too long: {name}")));
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        if size < 0o77777777777 {
            octal(&mut h[124..136], size);
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        octal(&mut h[136..148], 0);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum);
        self.out.write_all(&h)
    }
}

/// Zero-padded octal, NUL-terminated, filling `f`.
fn octal(f: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = f.len() - 1);
    f.copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn round_trip_and_pax_names() {
        let dir = std::env::temp_dir().join(format!("outpost-tar-{}", std::process::id()));
        let path = dir.with_extension("tar");
        let mut w = Writer::new(File::create(&path).unwrap());
        w.dir("blobs/").unwrap();
        w.file("a.txt", b"hello").unwrap();
        let long = "d/".repeat(80) + "f";
        let rec = format!("path={long}\n");
        let pax = format!("{} {rec}", rec.len() + 4);
        assert_eq!(pax.len(), rec.len() + 4);
        w.header("PaxHeaders/x", pax.len() as u64, b'x', 0o644)
            .unwrap();
        w.data(pax.as_bytes()).unwrap();
        w.pad(pax.len() as u64).unwrap();
        w.file("ignored-name", b"long one").unwrap();
        w.finish().unwrap();
        let mut f = File::open(&path).unwrap();
        let idx = index(&mut f).unwrap();
        let (off, len) = idx["a.txt"];
        let mut buf = vec![0; len as usize];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert_eq!(buf, b"hello");
        assert_eq!(idx[&long].1, 8);
        assert!(!idx.contains_key("ignored-name"));
        std::fs::write(
            &path,
            b"not a tar at all, just text that is long enough to fill".repeat(20),
        )
        .unwrap();
        assert!(index(&mut File::open(&path).unwrap())
            .unwrap_err()
            .contains("not a tar"));
        let _ = std::fs::remove_file(&path);
    }

    /// A header whose base-256 size brings the entry's end to 2^64 exactly: in a release
    /// build the sum wrapped to 0 and passed the length check, and the next header offset,
    /// 512 + (2^55 - 1) * 512, wrapped to 0 too: the same header again, for ever (a debug
    /// build panicked on the overflow instead).
    #[test]
    fn sizes_near_2_pow_64_are_refused() {
        let mut w = Writer::new(Vec::new());
        w.dir("d/").unwrap();
        let mut t = w.finish().unwrap();
        t[124..128].copy_from_slice(&[0x80, 0, 0, 0]);
        t[128..136].copy_from_slice(&(u64::MAX - 511).to_be_bytes());
        t[148..156].fill(b' ');
        let sum: u64 = t[..512].iter().map(|&b| u64::from(b)).sum();
        octal(&mut t[148..155], sum);
        let e = index(&mut std::io::Cursor::new(&t)).unwrap_err();
        assert!(e.contains("truncated archive"), "{e}");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Files with distinct names that fit the ustar name field.
    fn files() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        proptest::collection::btree_map(
            "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,30}(/[a-zA-Z0-9._-]{1,20}){0,2}",
            proptest::collection::vec(any::<u8>(), 0..1100),
            0..6,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.dir("blobs/").unwrap();
        for (name, data) in files {
            w.file(name, data).unwrap();
        }
        w.finish().unwrap()
    }

    /// Rewrites the checksum of the header at `at`, so that a mutated header is read.
    fn fix_checksum(tar: &mut [u8], at: usize) {
        let h = &mut tar[at..at + 512];
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum);
    }

    /// Size fields a hostile archive may hold: octal, GNU base-256 up to `u64::MAX`, junk.
    fn size_field() -> impl Strategy<Value = [u8; 12]> {
        let big = prop_oneof![any::<u64>(), (0u64..4096).prop_map(|d| u64::MAX - d)];
        prop_oneof![
            big.prop_map(|n| {
                let mut f = [0u8; 12];
                f[0] = 0x80;
                f[4..].copy_from_slice(&n.to_be_bytes());
                f
            }),
            (0u64..0o77777777777).prop_map(|n| {
                let mut f = [0u8; 12];
                octal(&mut f, n);
                f
            }),
            any::<[u8; 12]>(),
        ]
    }

    proptest! {
        #![proptest_config(prop_config(256))]

        /// What the writer writes, the index finds: every file, at an offset holding its
        /// bytes.
        #[test]
        fn write_then_index(files in files()) {
            let tar = archive(&files);
            let idx = index(&mut Cursor::new(&tar)).unwrap();
            prop_assert_eq!(idx.len(), files.len());
            for (name, data) in &files {
                let (at, size) = idx[name.as_str()];
                prop_assert_eq!(&tar[at as usize..(at + size) as usize], data.as_slice());
            }
        }

        /// Any size the writer puts in a header (octal, or base-256 past 8 GiB) reads back.
        #[test]
        fn header_sizes_round_trip(size in prop_oneof![any::<u64>(), 0u64..0o100000000000]) {
            let mut w = Writer::new(Vec::new());
            w.file_header("f", size).unwrap();
            let h: [u8; 512] = w.out.try_into().unwrap();
            prop_assert!(checksum_ok(&h));
            prop_assert_eq!(number(&h[124..136]), Some(size));
        }

        /// A header whose size field, type or PAX `size` record is hostile (its checksum
        /// made right so that it is believed): an index or an error, no panic, no hang, and
        /// every entry lies inside the archive.
        #[test]
        fn hostile_headers(
            files in files(),
            which in any::<prop::sample::Index>(),
            field in size_field(),
            kind in prop::sample::select(vec![b'0', 0, b'x', b'L', b'5', b'7', b'g']),
            pax_size in prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                (0u64..4096).prop_map(|d| (u64::MAX - d).to_string()),
                "[0-9]{18,25}",
                "\\PC{0,8}",
            ],
            junk in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut files = files;
            let rec = format!(" size={pax_size}\n");
            let len = (1..).map(|d| d + rec.len()).find(|n| n.to_string().len() + rec.len() == *n).unwrap();
            files.push(("pax".into(), format!("{len}{rec}").into_bytes()));
            files.push(("after-pax".into(), b"data".to_vec()));
            let mut tar = archive(&files);
            // Headers are the blocks the writer started an entry with.
            let mut heads = vec![0usize];
            let mut at = 512;
            for (_, data) in &files {
                heads.push(at);
                at += 512 + data.len().div_ceil(512) * 512;
            }
            let h = heads[which.index(heads.len())];
            tar[h + 124..h + 136].copy_from_slice(&field);
            tar[h + 156] = kind;
            fix_checksum(&mut tar, h);
            // The PAX record's stated length may be wrong too: the parser must cope.
            let pax = heads[heads.len() - 2];
            tar[pax + 156] = b'x';
            fix_checksum(&mut tar, pax);
            for t in [&tar[..], &[&tar[..], &junk[..]].concat()[..], &junk[..]] {
                if let Ok(idx) = index(&mut Cursor::new(t)) {
                    for (at, size) in idx.values() {
                        prop_assert!(at.checked_add(*size).is_some_and(|end| end <= t.len() as u64));
                    }
                }
            }
        }
    }
}
