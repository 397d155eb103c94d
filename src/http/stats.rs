//! Counters since start: mounts done and refused (by reason), bytes not written.

use crate::storage::MountRefused;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a mount request was answered with an upload session instead of 201.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `blobMounting` is disabled.
    Disabled,
    /// No `from`, and `automaticMount` is disabled.
    AutomaticDisabled,
    /// `from` is not a valid repository name.
    FromInvalid,
    /// `mount` is not a valid digest.
    DigestInvalid,
    /// The store's reason.
    Store(MountRefused),
}

const REASONS: usize = 9;

impl Refusal {
    fn index(self) -> usize {
        match self {
            Refusal::Disabled => 0,
            Refusal::AutomaticDisabled => 1,
            Refusal::FromInvalid => 2,
            Refusal::DigestInvalid => 3,
            Refusal::Store(MountRefused::FromUnknown) => 4,
            Refusal::Store(MountRefused::NotInFrom) => 5,
            Refusal::Store(MountRefused::NotStored) => 6,
            Refusal::Store(MountRefused::OtherDomain) => 7,
            Refusal::Store(MountRefused::NotReadable) => 8,
        }
    }

    /// The reason's name in logs and in `/admin/stats`.
    pub fn name(self) -> &'static str {
        NAMES[self.index()]
    }
}

const NAMES: [&str; REASONS] = [
    "disabled",
    "automaticDisabled",
    "fromInvalid",
    "digestInvalid",
    "fromUnknown",
    "notInFrom",
    "notStored",
    "otherDomain",
    "notReadable",
];

/// Counters, updated lock-free by the workers.
#[derive(Default)]
pub struct Stats {
    mounts: AtomicU64,
    mounted_bytes: AtomicU64,
    refused: [AtomicU64; REASONS],
    deduplicated: AtomicU64,
    deduplicated_bytes: AtomicU64,
}

impl Stats {
    /// A mount of `size` bytes was answered 201.
    pub fn mounted(&self, size: u64) {
        self.mounts.fetch_add(1, Ordering::Relaxed);
        self.mounted_bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// A mount was refused.
    pub fn refused(&self, why: Refusal) {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// An upload of `size` bytes turned out to be stored already.
    pub fn deduplicated(&self, size: u64) {
        self.deduplicated.fetch_add(1, Ordering::Relaxed);
        self.deduplicated_bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let refused: Map<String, Value> = NAMES
            .iter()
            .zip(&self.refused)
            .map(|(n, c)| ((*n).to_owned(), json!(get(c))))
            .collect();
        json!({
            "mounts": {
                "done": get(&self.mounts),
                "bytesNotWritten": get(&self.mounted_bytes),
                "refused": refused,
            },
            "uploads": {
                "deduplicated": get(&self.deduplicated),
                "bytesDeduplicated": get(&self.deduplicated_bytes),
            },
        })
    }
}
