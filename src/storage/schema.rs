//! Table definitions: the whole on-disk schema in one place (see ARCHITECTURE.md).

use redb::TableDefinition;

/// Counters and the schema version: `next_repo_id`, `next_blob_id`, `next_push`,
/// `schema_version`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Repository name -> (repository id, encryption domain). Sorted by name: also the catalog.
pub const REPOS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("repositories");
/// Encryption domain id (from 1) -> encoded domain: name, algorithm, and its data key wrapped
/// by one or two master keys (two only while a master key rotation is under way).
pub const DOMAINS: TableDefinition<u64, &[u8]> = TableDefinition::new("domains");
/// (encryption domain, digest) -> (blob id, size, link count). Domain 0 is plaintext.
pub const BLOBS: TableDefinition<(u64, &str), (u64, u64, u64)> = TableDefinition::new("blobs");
/// (blob id, byte offset) -> bytes: plaintext, or `nonce ‖ ciphertext ‖ tag` in an encrypted
/// domain. Appends add rows; a Range read seeks to its first row.
pub const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
/// (repository id, digest) -> (how it was linked, unix seconds).
pub const LINKS: TableDefinition<(u64, &str), (u8, u64)> = TableDefinition::new("links");
/// (repository id, digest) -> encoded manifest (media type, subject, bytes), sealed in an
/// encrypted domain.
pub const MANIFESTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("manifests");
/// (repository id, tag) -> manifest digest.
pub const TAGS: TableDefinition<(u64, &str), &str> = TableDefinition::new("tags");
/// (repository id, subject digest, referrer digest) -> descriptor JSON, sealed in an
/// encrypted domain.
pub const REFERRERS: TableDefinition<(u64, &str, &str), &[u8]> = TableDefinition::new("referrers");
/// Upload id -> (repository name, domain, blob id, bytes received, unix seconds of last
/// activity). The domain is fixed when the session opens: its chunks are sealed for it.
pub const UPLOADS: TableDefinition<&str, (&str, u64, u64, u64, u64)> =
    TableDefinition::new("upload_sessions");

/// (domain, fingerprint of a blob's first 4 KiB, digest) -> (). Finds stored blobs that an
/// upload may be repeating, so that its bytes are compared instead of written.
pub const PREFIXES: TableDefinition<(u64, u64, &str), ()> = TableDefinition::new("prefixes");
/// Upload id -> (domain, digest) of the stored blob the upload has repeated byte for byte so
/// far. The blob's link count includes one for each such upload, so it stays while shadowed.
pub const SHADOWS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("shadows");

/// Registry settings changed at runtime: name -> value. They outlive restarts and win over
/// the config file (like PostgreSQL's `ALTER SYSTEM`); removing one returns to the file's.
pub const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

/// User name -> password hash (`$pbkdf2-sha256$...`): users who sign in besides those of
/// an htpasswd file.
pub const USERS: TableDefinition<&str, &str> = TableDefinition::new("users");

/// Mirror name -> its state as JSON: last pass, totals, upstream digests of synced tags,
/// and upload sessions of interrupted blob transfers (resumed by the next pass).
pub const MIRRORS: TableDefinition<&str, &[u8]> = TableDefinition::new("mirrors");

/// (repository id, referenced digest, manifest digest) -> `REF_*` kind: what each manifest of a
/// repository needs (the blobs it lists, the manifests an index lists). The collector asks
/// "does anything reference this link?" with one range lookup, in the same write transaction
/// that deletes it, so a manifest PUT and a collection are ordered by redb's single writer.
pub const REFS: TableDefinition<(u64, &str, &str), u8> = TableDefinition::new("references");
/// (repository id, manifest digest) -> (unix seconds of its first push, push sequence
/// number): what lifecycle rules age and order by (the number orders pushes within a second).
pub const PUSHED: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("pushed");

/// Blob id -> (): a blob the collector deleted whose chunk rows are still to go. They are
/// deleted a bounded batch per transaction afterwards, so that dropping a large blob never
/// holds the writer for long (1 GiB is 4,096 rows of 256 KiB).
pub const DEAD: TableDefinition<u64, ()> = TableDefinition::new("dead_blobs");

/// Quota key -> bytes it holds: `""` the whole store (every stored blob once per domain, and
/// every manifest record), a configured pattern the unique (domain, digest) blobs its
/// repositories link and their manifest records. Written in the transactions that change
/// them; rebuilt at open when the configured patterns are not exactly its keys.
pub const QUOTA_USAGE: TableDefinition<&str, u64> = TableDefinition::new("quota_usage");

/// The schema this build writes; a store with another is refused, not guessed at.
/// Version 2 added encryption domains (`domains`, the domain of each repository and upload);
/// a version 1 store is migrated at open (all of it plaintext). Version 3 added `references`
/// and `pushed`, built at open from the stored manifests (push time: the latest link time of
/// what each lists, else the migration's). Version 4 added `quota_usage`, built at open.
pub const SCHEMA_VERSION: u64 = 4;

/// Version 1's `repos`: name -> id.
pub const REPOS_V1: TableDefinition<&str, u64> = TableDefinition::new("repos");
/// Version 1's `uploads`: id -> (repository name, blob id, bytes received, last activity).
pub const UPLOADS_V1: TableDefinition<&str, (&str, u64, u64, u64)> =
    TableDefinition::new("uploads");

/// How a blob came to be linked into a repository: uploaded (or deduplicated at the finish).
pub const LINK_PUSHED: u8 = 0;
/// Linked by a cross-repository mount.
pub const LINK_MOUNTED: u8 = 1;

/// A `REFS` kind: the manifest lists a blob (config or layer) that must be linked.
pub const REF_BLOB: u8 = 0;
/// A `REFS` kind: the manifest (an index) lists another manifest of the repository.
pub const REF_CHILD: u8 = 1;
/// Added to a `REFS` kind when the manifest was stored without its references present (a
/// pull-through cache fetches them on demand): the check does not require them.
pub const REF_LAZY: u8 = 0x10;

/// (`QUARANTINE_*` kind, scope, digest) -> (unix seconds found, why): objects the scrub
/// found damaged. A blob's scope is its domain, a manifest's its repository id. A quarantined
/// blob is never served, mounted or deduplicated against; the row goes when the object is
/// replaced (healed, pushed again) or deleted. Added without a schema version: a store
/// without it simply has none, and an older build ignores it (and serves as it always did).
pub const QUARANTINE: TableDefinition<(u8, u64, &str), (u64, &str)> =
    TableDefinition::new("quarantine");
/// A `QUARANTINE` kind: a blob (scope: its domain).
pub const QUARANTINE_BLOB: u8 = 0;
/// A `QUARANTINE` kind: a manifest (scope: its repository id).
pub const QUARANTINE_MANIFEST: u8 = 1;

/// Name -> JSON: the scrub's state (the pass under way and where it stands, the last full
/// pass), so that a week-long pass goes on after a restart instead of starting again.
pub const SCRUB: TableDefinition<&str, &[u8]> = TableDefinition::new("scrub");

/// Sequence number -> JSON `audit::Record`: who changed what, appended in the transaction of
/// each change, the oldest dropped past `audit.maxRecords`. Added without a schema version
/// (like `quarantine`): an older build ignores it.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// (repository, tag or digest) -> (manifest GETs, unix seconds of the last): pull counts,
/// written a batch at a time (not per pull).
pub const PULLS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("pulls");
/// Notification endpoint name -> the last audit sequence number delivered to it.
pub const EVENT_CURSORS: TableDefinition<&str, u64> = TableDefinition::new("event_cursors");
