//! Content digests: parse and validate `algorithm:hex`, and hash streams.

use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;

/// A digest algorithm Outpost can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// sha256, the default and the one every client uses.
    Sha256,
    /// sha512, supported by the spec for registries that choose to.
    Sha512,
}

impl Algorithm {
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// Why a string is not a usable digest.
#[derive(Debug, PartialEq, Eq)]
pub enum DigestError {
    /// Not of the spec's `algorithm:encoded` grammar, or wrong length/case for its algorithm.
    Malformed,
    /// Well-formed, but an algorithm this registry does not verify.
    Unsupported,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestError::Malformed => "malformed digest (expected sha256:<64 lowercase hex>)",
            DigestError::Unsupported => "unsupported digest algorithm (sha256 and sha512 are)",
        })
    }
}

/// A validated content digest, e.g. `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    text: String,
    algorithm: Algorithm,
}

impl Digest {
    /// Parses and validates a digest string from a client.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::Malformed)?;
        if !valid_algorithm_grammar(alg) || hex.is_empty() {
            return Err(DigestError::Malformed);
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
        {
            return Err(DigestError::Malformed);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::Unsupported),
        };
        if hex.len() != algorithm.hex_len()
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::Malformed);
        }
        Ok(Digest {
            text: s.to_owned(),
            algorithm,
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    /// The digest of `bytes` by this digest's algorithm (to compare with it).
    pub fn rehash(&self, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(self.algorithm);
        h.update(bytes);
        h.finish()
    }

    /// The digest as `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Which algorithm produced it.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// algorithm ::= component ([+._-] component)*, component ::= [a-z0-9]+
fn valid_algorithm_grammar(alg: &str) -> bool {
    !alg.is_empty()
        && alg
            .split(['+', '.', '_', '-'])
            .all(|c| !c.is_empty() && c.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9')))
}

/// An incremental hasher for one algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// sha256 state.
    Sha256(Sha256),
    /// sha512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Which algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let raw: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        let mut text = String::with_capacity(algorithm.name().len() + 1 + raw.len() * 2);
        text.push_str(algorithm.name());
        text.push(':');
        for b in raw {
            text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            text.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Digest { text, algorithm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok).unwrap().as_str(), ok);
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("SHA256:{}", "a".repeat(64)),
            "sha256:../../etc/passwd",
        ] {
            assert_eq!(Digest::parse(bad), Err(DigestError::Malformed), "{bad}");
        }
        assert_eq!(
            Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e"),
            Err(DigestError::Unsupported)
        );
    }

    #[test]
    fn hashes_known_vectors() {
        assert_eq!(
            Digest::sha256_of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(b"abc");
        assert!(h.finish().as_str().starts_with("sha512:ddaf35a193617aba"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(prop_config(512))]

        /// Any text parses or is refused without a panic; what parses prints as it was read
        /// and parses again to the same digest.
        #[test]
        fn parse_display_round_trip(s in "\\PC{0,200}|(sha256|sha512|[a-z0-9+._-]{1,10}):[0-9a-fA-Z=_-]{0,130}") {
            if let Ok(d) = Digest::parse(&s) {
                prop_assert_eq!(d.to_string(), s.clone());
                prop_assert_eq!(Digest::parse(d.as_str()), Ok(d.clone()));
                let want = match d.algorithm() {
                    Algorithm::Sha256 => 64,
                    Algorithm::Sha512 => 128,
                };
                prop_assert_eq!(s.len(), d.algorithm().name().len() + 1 + want);
            }
        }

        /// Every digest we compute parses back to itself.
        #[test]
        fn computed_digests_parse(bytes in proptest::collection::vec(any::<u8>(), 0..256), sha512 in any::<bool>()) {
            let mut h = Hasher::new(if sha512 { Algorithm::Sha512 } else { Algorithm::Sha256 });
            h.update(&bytes);
            let d = h.finish();
            prop_assert_eq!(Digest::parse(&d.to_string()), Ok(d));
        }

        /// The grammar's well-formed digests are accepted, and one bad character or a
        /// length off by one is refused.
        #[test]
        fn mutations_are_refused(
            hex in "[0-9a-f]{128}",
            sha512 in any::<bool>(),
            at in any::<prop::sample::Index>(),
            bad in "[g-zA-Z:/. %\u{e9}]",
        ) {
            let (alg, n) = if sha512 { ("sha512", 128) } else { ("sha256", 64) };
            let hex = &hex[..n];
            let good = format!("{alg}:{hex}");
            prop_assert!(Digest::parse(&good).is_ok());
            let i = at.index(n);
            let mutated = format!("{alg}:{}{bad}{}", &hex[..i], &hex[i + 1..]);
            prop_assert!(Digest::parse(&mutated).is_err(), "{}", mutated);
            prop_assert_eq!(Digest::parse(&good[..good.len() - 1]), Err(DigestError::Malformed));
            prop_assert_eq!(Digest::parse(&format!("{good}0")), Err(DigestError::Malformed));
        }
    }
}
