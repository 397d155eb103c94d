//! Encryption at rest: the master key, data keys wrapped by it, and sealing with ring's AEADs.
//!
//! Envelope encryption: a 256-bit master key, kept outside the database, wraps each encryption
//! domain's random 256-bit data key (AES-256-GCM). Data keys seal every chunk and manifest of
//! their domain. Every sealed value is `nonce (12) ‖ ciphertext ‖ tag (16)` with a random
//! nonce: a counter would repeat after a crash rolled the database back.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::path::Path;

/// Bytes a sealed value has beyond its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes of a key: master and data keys are all 256-bit.
pub const KEY_LEN: usize = 32;
/// Bytes of a wrapped data key.
pub const WRAPPED_LEN: usize = KEY_LEN + SEAL_OVERHEAD;

/// An AEAD a domain's data key is used with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// AES-256-GCM: fastest where the CPU has AES instructions (x86, ARMv8 with crypto).
    Aes256Gcm,
    /// ChaCha20-Poly1305: fastest on cores without them (Raspberry Pi 4's Cortex-A72).
    ChaCha20Poly1305,
}

impl Algorithm {
    /// Every algorithm, for messages.
    pub const NAMES: &'static str = "aes-256-gcm, chacha20-poly1305";

    /// Parses `aes-256-gcm` or `chacha20-poly1305`.
    pub fn parse(s: &str) -> Result<Algorithm, String> {
        match s {
            "aes-256-gcm" => Ok(Algorithm::Aes256Gcm),
            "chacha20-poly1305" => Ok(Algorithm::ChaCha20Poly1305),
            _ => Err(format!(
                "{s:?} is not an algorithm (use {})",
                Algorithm::NAMES
            )),
        }
    }

    /// The name used in config files and output.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The byte stored for it.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 1,
            Algorithm::ChaCha20Poly1305 => 2,
        }
    }

    /// The algorithm stored as `code`.
    pub fn from_code(code: u8) -> Option<Algorithm> {
        match code {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::ChaCha20Poly1305),
            _ => None,
        }
    }

    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Algorithm::Aes256Gcm => &aead::AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// A sealed value did not open: altered, moved, or sealed with another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFailed;

/// True if `a` and `b` are equal, in time that depends only on their lengths (for secrets).
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fresh random bytes.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // ring's SystemRandom is getrandom(2); it does not fail on Linux after boot.
    SystemRandom::new()
        .fill(&mut out)
        .expect("the system random number generator failed");
    out
}

/// An AEAD key with its algorithm. Never printed: no Debug, no Display.
struct SealingKey(LessSafeKey);

impl SealingKey {
    fn new(algorithm: Algorithm, raw: &[u8; KEY_LEN]) -> SealingKey {
        let key = UnboundKey::new(algorithm.ring(), raw).expect("a 256-bit key fits both AEADs");
        SealingKey(LessSafeKey::new(key))
    }

    /// Appends `nonce ‖ seal(plain) ‖ tag` to `out`.
    fn seal(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let nonce = random::<NONCE_LEN>();
        out.reserve(plain.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .expect("sealing fails only on absurd lengths");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens `sealed` (as written by `seal`) in place; the plaintext is the returned slice,
    /// at the start of `sealed` (ring shifts it over the nonce as it decrypts).
    fn open<'a>(&self, aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a mut [u8], OpenFailed> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenFailed);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| OpenFailed)?;
        self.0
            .open_within(nonce, Aad::from(aad), sealed, NONCE_LEN..)
            .map_err(|_| OpenFailed)
    }
}

/// The master key: wraps and unwraps data keys. Loaded from a file, never stored in the
/// database; only its id (an HMAC of a constant under it) is.
pub struct MasterKey {
    key: SealingKey,
    id: String,
    source: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {}, from {})", self.id, self.source)
    }
}

impl MasterKey {
    /// The key `raw`, described as `source` in messages.
    pub fn from_bytes(raw: &[u8; KEY_LEN], source: &str) -> MasterKey {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, raw),
            b"outpost master key id",
        );
        MasterKey {
            key: SealingKey::new(Algorithm::Aes256Gcm, raw),
            id: hex(&tag.as_ref()[..4]),
            source: source.to_owned(),
        }
    }

    /// Reads a master key file: 64 hex digits (what `outpost key generate` writes) or 32 raw
    /// bytes. Refused if group or others may read it, or if it is not a regular file.
    pub fn load(path: &Path) -> Result<MasterKey, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read master key {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("master key {shown} is not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "master key {shown} may be read by group or others (mode {mode:03o}): \
                 run chmod 600 {shown}"
            ));
        }
        let raw =
            std::fs::read(path).map_err(|e| format!("cannot read master key {shown}: {e}"))?;
        let key = parse_key(&raw).ok_or_else(|| {
            format!(
                "master key {shown} must hold 64 hex digits or 32 bytes \
                 (outpost key generate FILE writes one)"
            )
        })?;
        Ok(MasterKey::from_bytes(&key, &shown.to_string()))
    }

    /// A short public name of this key (8 hex digits), safe to log and store.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the key came from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Wraps data key `raw` of domain `domain`, named `name`, used with `algorithm`. All three
    /// are bound to the wrap: a wrapped key copied to another domain row does not unwrap.
    pub fn wrap(
        &self,
        domain: u64,
        name: &str,
        algorithm: Algorithm,
        raw: &[u8; KEY_LEN],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        self.key
            .seal(&wrap_aad(domain, name, algorithm), raw, &mut out);
        out
    }

    /// Unwraps what `wrap` made with the same domain, name and algorithm.
    pub fn unwrap(
        &self,
        domain: u64,
        name: &str,
        algorithm: Algorithm,
        wrapped: &[u8],
    ) -> Result<[u8; KEY_LEN], OpenFailed> {
        let mut buf = wrapped.to_vec();
        let plain = self
            .key
            .open(&wrap_aad(domain, name, algorithm), &mut buf)?;
        let key = <[u8; KEY_LEN]>::try_from(&*plain).map_err(|_| OpenFailed);
        plain.fill(0);
        key
    }
}

fn wrap_aad(domain: u64, name: &str, algorithm: Algorithm) -> Vec<u8> {
    let mut aad = b"outpost data key\0".to_vec();
    aad.extend_from_slice(&domain.to_be_bytes());
    aad.push(algorithm.code());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// A domain's data key: seals and opens its chunks and manifests, and keys its fingerprints.
pub struct DataKey {
    algorithm: Algorithm,
    key: SealingKey,
    fingerprint: hmac::Key,
}

impl DataKey {
    /// The data key `raw` used with `algorithm`.
    pub fn new(algorithm: Algorithm, raw: &[u8; KEY_LEN]) -> DataKey {
        // A separate key for fingerprints, derived so that the AEAD key is used for one thing.
        let derive = hmac::Key::new(hmac::HMAC_SHA256, raw);
        let fp = hmac::sign(&derive, b"outpost fingerprint key");
        DataKey {
            algorithm,
            key: SealingKey::new(algorithm, raw),
            fingerprint: hmac::Key::new(hmac::HMAC_SHA256, fp.as_ref()),
        }
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Appends `plain` sealed under `aad` to `out`.
    pub fn seal(&self, aad: &Binding, plain: &[u8], out: &mut Vec<u8>) {
        self.key.seal(aad.as_ref(), plain, out)
    }

    /// Opens a sealed value in place; the plaintext is the returned slice.
    pub fn open<'a>(
        &self,
        aad: &Binding,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenFailed> {
        self.key.open(aad.as_ref(), sealed)
    }

    /// A keyed fingerprint of a blob's first bytes: without the key, the table of
    /// fingerprints says nothing about content.
    pub fn fingerprint(&self, head: &[u8]) -> u64 {
        let tag = hmac::sign(&self.fingerprint, head);
        u64::from_be_bytes(tag.as_ref()[..8].try_into().expect("8 bytes"))
    }
}

/// Associated data binding a sealed value to where it belongs: a kind byte, then fields.
pub struct Binding(Vec<u8>);

impl Binding {
    /// Chunk at byte `offset` of blob id `blob`.
    pub fn chunk(blob: u64, offset: u64) -> Binding {
        let mut v = Vec::with_capacity(17);
        v.push(b'c');
        v.extend_from_slice(&blob.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        Binding(v)
    }

    /// Record `key` (a manifest's or referrer's digest path) of repository id `repo` in table
    /// `kind` (`m` manifests, `r` referrers).
    pub fn record(kind: u8, repo: u64, key: &[&str]) -> Binding {
        let mut v = vec![kind];
        v.extend_from_slice(&repo.to_be_bytes());
        for k in key {
            v.extend_from_slice(k.as_bytes());
            v.push(0);
        }
        Binding(v)
    }
}

impl AsRef<[u8]> for Binding {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key file's content: 64 hex digits (surrounding whitespace allowed) or 32 raw bytes.
fn parse_key(raw: &[u8]) -> Option<[u8; KEY_LEN]> {
    let text = std::str::from_utf8(raw).map(str::trim).unwrap_or("");
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; KEY_LEN];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(key);
    }
    <[u8; KEY_LEN]>::try_from(raw).ok()
}

/// Writes a new random master key, as hex, to a new file `path` readable by its owner only.
pub fn generate_master_key(path: &Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            format!("cannot create {shown}: {e} (an existing key is never overwritten)")
        })?;
    let raw = random::<KEY_LEN>();
    file.write_all(format!("{}\n", hex(&raw)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    Ok(MasterKey::from_bytes(&raw, "").id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_key_place_and_content() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
            let key = DataKey::new(alg, &[7; KEY_LEN]);
            let mut sealed = Vec::new();
            key.seal(&Binding::chunk(3, 4096), b"layer bytes", &mut sealed);
            assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
            let mut copy = sealed.clone();
            let plain = key.open(&Binding::chunk(3, 4096), &mut copy).unwrap();
            assert_eq!(plain, b"layer bytes");
            assert_eq!(&copy[..11], b"layer bytes");
            // Moved to another offset or blob, altered, or another key: refused.
            assert!(key
                .open(&Binding::chunk(3, 0), &mut sealed.clone())
                .is_err());
            assert!(key
                .open(&Binding::chunk(4, 4096), &mut sealed.clone())
                .is_err());
            let mut flipped = sealed.clone();
            flipped[20] ^= 1;
            assert!(key.open(&Binding::chunk(3, 4096), &mut flipped).is_err());
            let other = DataKey::new(alg, &[8; KEY_LEN]);
            assert!(other
                .open(&Binding::chunk(3, 4096), &mut sealed.clone())
                .is_err());
        }
    }

    #[test]
    fn wrapping_binds_domain_name_and_algorithm() {
        let master = MasterKey::from_bytes(&[1; KEY_LEN], "test");
        let w = master.wrap(5, "plant-a", Algorithm::Aes256Gcm, &[9; KEY_LEN]);
        assert_eq!(w.len(), WRAPPED_LEN);
        let ok = master.unwrap(5, "plant-a", Algorithm::Aes256Gcm, &w);
        assert_eq!(ok, Ok([9; KEY_LEN]));
        assert!(master
            .unwrap(6, "plant-a", Algorithm::Aes256Gcm, &w)
            .is_err());
        assert!(master
            .unwrap(5, "plant-b", Algorithm::Aes256Gcm, &w)
            .is_err());
        let cha = Algorithm::ChaCha20Poly1305;
        assert!(master.unwrap(5, "plant-a", cha, &w).is_err());
        let other = MasterKey::from_bytes(&[2; KEY_LEN], "other");
        assert!(other
            .unwrap(5, "plant-a", Algorithm::Aes256Gcm, &w)
            .is_err());
        assert_ne!(master.id(), other.id());
        assert_eq!(master.id().len(), 8);
    }

    #[test]
    fn key_files() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        assert_eq!(parse_key(hex64.as_bytes()).unwrap()[1], 0x11);
        assert_eq!(parse_key(&[5; 32]), Some([5; 32]));
        assert_eq!(parse_key(b"short"), None);
        assert_eq!(parse_key(&[5; 33]), None);
    }
}
