//! The CLI's help: a one-line-per-command overview (`outpost help`, `outpost --help`) and
//! each command's own usage, explanation and example (`outpost help gc`, `outpost gc
//! --help`, `outpost help user` for every `user` subcommand).

use super::output::out;

/// One command's help.
pub struct Entry {
    /// The words naming it, e.g. `repo create`.
    pub name: &'static str,
    /// Its usage line(s), without the leading `outpost `.
    pub usage: &'static str,
    /// One line for the overview.
    pub summary: &'static str,
    /// What it does, its options, and an example.
    pub text: &'static str,
    /// Whether it takes the COMMON options (and then which part of them).
    pub common: Common,
}

/// Which shared options a command takes.
#[derive(PartialEq)]
pub enum Common {
    /// None.
    None,
    /// --config, --listen, --data-dir, --master-key-file: the store, which must be stopped.
    Local,
    /// Those and --server, --user, --ca-file: a running registry, here or elsewhere.
    Remote,
}

impl Common {
    /// The long options (without dashes) these are.
    pub fn options(&self) -> &'static [&'static str] {
        match self {
            Common::None => &[],
            Common::Local => &["config", "listen", "data-dir", "master-key-file"],
            Common::Remote => &[
                "config",
                "listen",
                "data-dir",
                "master-key-file",
                "server",
                "user",
                "ca-file",
            ],
        }
    }
}

/// Every command, in the overview's order. Add a command here with its parse entry in
/// main.rs.
pub const COMMANDS: &[Entry] = &[
    Entry {
        name: "serve",
        usage: "serve [OPTIONS]",
        summary: "run the registry",
        common: Common::None,
        text: "\
Runs the registry. Options (flags override the config file, which overrides the defaults):
  --config FILE             JSON config file (keys: listen, dataDir, maxConnections,
                            headerTimeout, idleTimeout, ioTimeout, minTransferRate,
                            workers, cacheSize, chunkSize, maxManifestSize, uploadTtl,
                            minFreeSpace, blobMounting, automaticMount, masterKeyFile,
                            encryption, auth, access, tls, mirrors, gcGracePeriod,
                            gcInterval, lifecycle, immutableTags, scrubRate,
                            scrubInterval, logFormat, metrics)
  --listen ADDR             address to listen on          [default: 127.0.0.1:5000]
  --data-dir DIR            directory of outpost.redb     [default: ./outpost-data]
  --master-key-file FILE    master key for encrypted repositories [default: the systemd
                            credential outpost-master-key, if any]
  --max-connections N       connections served at once; beyond, idle ones are
                            closed to make room, else 503   [default: 256]
  --header-timeout DURATION a request's headers must arrive within this [default: 10s]
  --idle-timeout DURATION   close kept-alive connections idle this long [default: 60s]
  --io-timeout DURATION     bodies and responses must move at least the minimum
                            rate in every such window of waiting [default: 2m]
  --min-transfer-rate SIZE  that minimum, bytes per second [default: 1KiB]
  --workers N               chunk-sized buffers every transfer steps through
                            (memory: N x chunk size)       [default: 8]
  --cache-size SIZE         database page cache           [default: 2MiB]
  --chunk-size SIZE         stored chunk size, a power of two [default: 256KiB]
  --max-manifest-size SIZE  largest manifest accepted     [default: 4MiB]
  --min-free-space SIZE     refuse uploads below this free disk [default: 64MiB]
  --upload-ttl DURATION     drop upload sessions idle this long [default: 24h]
  --blob-mounting enabled|disabled   honour cross-repository mounts [default: enabled]
  --automatic-mount enabled|disabled mounts without from= search all repositories
                                     [default: enabled]
  --log-format text|json    json: every log line one JSON object [default: text]
  -h, --help                this help

SIZE is bytes or a number with KiB, MiB or GiB; DURATION is seconds or a number with s, m,
h, d. Logs go to stderr; set RUST_LOG (e.g. debug).

Example:
  outpost serve --config /etc/outpost/outpost.json --listen 0.0.0.0:5000",
    },
    Entry {
        name: "settings",
        usage: "settings [NAME=VALUE ...] [COMMON]",
        summary: "show or change the switches that change while the registry runs",
        common: Common::Remote,
        text: "\
Shows the switches that can change while the registry runs (blobMounting, automaticMount)
and sets them: NAME=enabled, NAME=disabled, or NAME=default (back to the config file). On a
stopped store the change applies from its next start.

Example:
  outpost settings --server https://10.0.0.5:5000 --user root automaticMount=disabled",
    },
    Entry {
        name: "repo create",
        usage: "repo create NAME [--key KEY [--algorithm ALG]] [COMMON]",
        summary: "make a repository, plaintext or encrypted with a data key",
        common: Common::Remote,
        text: "\
Makes a repository with data key KEY (created if new; ALG is aes-256-gcm, the default, or
chacha20-poly1305), or plaintext without --key. Encryption needs masterKeyFile.

Example:
  outpost repo create plant-a/web --key plant-a",
    },
    Entry {
        name: "repo delete",
        usage: "repo delete NAME [--erase] [COMMON]",
        summary: "delete a repository (--erase: and destroy its key)",
        common: Common::Remote,
        text: "\
Removes a repository and what only it holds; --erase also destroys its key (crypto-erase),
if no other repository uses it.

Example:
  outpost repo delete plant-a/web --erase",
    },
    Entry {
        name: "repo move",
        usage: "repo move NAME (--key KEY [--algorithm ALG] | --plaintext) [COMMON]",
        summary: "re-encrypt a repository under another key, or decrypt it to plaintext",
        common: Common::Local,
        text: "\
Encrypts a repository under key KEY (created if new), re-encrypting what another key
sealed; --plaintext decrypts it instead. It needs the store to itself: stop the registry
first.

Example:
  systemctl stop outpost && outpost repo move plant-a/web --key plant-a-2024",
    },
    Entry {
        name: "key list",
        usage: "key list [COMMON]",
        summary: "list the data keys, their algorithms and repositories (never key material)",
        common: Common::Remote,
        text: "\
Lists each data key: its algorithm, the blobs and bytes it seals, the master key(s) that
wrap it, and the repositories that use it. No key material is shown.

Example:
  outpost key list --config /etc/outpost/outpost.json",
    },
    Entry {
        name: "key generate",
        usage: "key generate FILE",
        summary: "write a new master key file",
        common: Common::None,
        text: "\
Writes a new master key file (mode 600). Keep a copy somewhere safe: without it, encrypted
repositories cannot be read.

Example:
  outpost key generate /etc/outpost/master.key",
    },
    Entry {
        name: "key rotate",
        usage: "key rotate [--new-master-key FILE] [COMMON]",
        summary: "re-wrap every data key under a new master key",
        common: Common::Local,
        text: "\
Re-wraps every data key under a new master key, without re-encrypting data. Without
--new-master-key it generates one and replaces masterKeyFile (a crash at any point leaves a
store one of the two keys opens); with --new-master-key FILE both keys open the store until
outpost first starts with FILE. It needs the store to itself: stop the registry first.

Example:
  outpost key rotate --config /etc/outpost/outpost.json",
    },
    Entry {
        name: "user add",
        usage: "user add NAME [COMMON]",
        summary: "add a user",
        common: Common::Remote,
        text: "\
Adds a user kept in the store. The password is read from the terminal (asked twice, not
echoed) or the first line of stdin, never from the command line; it is stored as a
PBKDF2-SHA256 hash. Against a remote registry with --user and no $OUTPOST_PASSWORD, stdin's
first line is that admin's password and the second the new user's. With no store there, it
creates one (users set up before the first start).

Example:
  echo 's3cret-pass' | outpost user add alice --config /etc/outpost/outpost.json",
    },
    Entry {
        name: "user passwd",
        usage: "user passwd NAME [COMMON]",
        summary: "change a user's password",
        common: Common::Remote,
        text: "\
Changes the password of a user kept in the store, read like user add's.

Example:
  outpost user passwd alice --server https://gw1:5000 --user root --ca-file gw1.crt",
    },
    Entry {
        name: "user del",
        usage: "user del NAME [COMMON]",
        summary: "delete a user",
        common: Common::Remote,
        text: "\
Deletes a user kept in the store (users of auth.htpasswd are managed in that file).

Example:
  outpost user del alice",
    },
    Entry {
        name: "user list",
        usage: "user list [COMMON]",
        summary: "list the users (also those of auth.htpasswd)",
        common: Common::Remote,
        text: "\
Lists the users kept in the store, then those of auth.htpasswd, marked (htpasswd).

Example:
  outpost user list --server https://gw1:5000 --user root",
    },
    Entry {
        name: "tls self-signed",
        usage: "tls self-signed --host NAME [--host NAME ...] [--out DIR] [--days N] [COMMON]",
        summary: "write a self-signed certificate and key for HTTPS",
        common: Common::Local,
        text: "\
Writes DIR/outpost.crt and DIR/outpost.key (DIR defaults to the current directory; N days,
default 825) for the given host names or IP addresses, and prints the tls config lines and
how to make docker, podman and containerd trust the certificate. It never overwrites.

Example:
  outpost tls self-signed --host gw1.plant-a.example --host 10.0.0.5 --out /etc/outpost",
    },
    Entry {
        name: "export",
        usage: "export IMAGE... -o FILE.tar|DIR [--platform P,...|--all-platforms] [COMMON]",
        summary: "write images to an OCI image layout (tar or directory)",
        common: Common::Remote,
        text: "\
Writes the images (REPO:TAG, REPO@DIGEST, or REPO for all its tags) as an OCI image layout:
a tar file if the name ends in .tar, else a directory. --platform keeps only those
platforms of multi-platform images (e.g. linux/arm64,linux/arm/v7; the index is rewritten);
by default, or with --all-platforms, images are exported whole. It works on the store when
no registry serves it, else through that registry's HTTP API where it listens (the local
registry's own tls.certFile is trusted). Progress shows on a terminal.

Example:
  outpost export plant-a/web:1.4 -o web.tar --platform linux/arm64",
    },
    Entry {
        name: "import",
        usage: "import FILE.tar|DIR [--repo NAME[:TAG]] [--platform P,...] [COMMON]",
        summary: "read images from an OCI image layout or docker save archive",
        common: Common::Remote,
        text: "\
Reads an OCI image layout (tar or directory; what skopeo copy oci-archive:/oci: and docker
save write) or an older docker save archive, naming repositories from the archive's
annotations or --repo. Every blob is verified before it is stored; blobs already stored are
not written again (reported as already present), so an interrupted import can simply be run
again. A tag that named another image is moved, and the import says from which digest to
which. Works on the store when no registry serves it (creating it if there is none), else
through that registry's HTTP API where it listens (the local registry's own tls.certFile is
trusted). Progress shows on a terminal.

Example:
  outpost import web.tar --repo plant-a/web:1.4 --server https://gw1:5000 --user ci",
    },
    Entry {
        name: "mirror run",
        usage: "mirror run [NAME] [COMMON]",
        summary: "run one sync pass of the mirrors now",
        common: Common::Remote,
        text: "\
Runs one sync pass of the mirrors with repositories (or only NAME) now, and names each
mirror whose pass failed: the running registry's mirrors, or the config's on a stopped
store. With no store there, it creates one (a gateway's first pass).

Example:
  outpost mirror run hub --config /etc/outpost/outpost.json",
    },
    Entry {
        name: "mirror status",
        usage: "mirror status [COMMON]",
        summary: "show each mirror's last pass, totals and cache activity",
        common: Common::Remote,
        text: "\
Shows each mirror's last pass, totals and pull-through cache activity.

Example:
  outpost mirror status --server https://gw1:5000 --user root",
    },
    Entry {
        name: "gc",
        usage: "gc [--dry-run] [--json] [COMMON]",
        summary: "run a garbage collection pass now (--dry-run: only show it)",
        common: Common::Remote,
        text: "\
Runs a garbage collection pass now and prints what it deleted: images that the config's
lifecycle rules expire, blob links no manifest lists once older than gcGracePeriod, blobs
whose last link went, repositories left empty. --dry-run prints what it would delete and the
bytes that would be freed, deleting nothing. On a stopped store the rules come from
--config. --json prints the report as JSON.

Example:
  outpost gc --dry-run --config /etc/outpost/outpost.json",
    },
    Entry {
        name: "du",
        usage: "du [--json] [COMMON]",
        summary: "show the space each repository uses and the store's file size",
        common: Common::Remote,
        text: "\
Shows per repository the bytes it links, holds alone and shares, and the store's file size
against its live bytes (and quotas). --json prints the report as JSON.

Example:
  outpost du --server https://gw1:5000 --user root --ca-file gw1.crt",
    },
    Entry {
        name: "scrub",
        usage: "scrub [--repo NAME] [--status] [--json] [COMMON]",
        summary: "re-read and re-hash every blob and manifest now, or show the last pass",
        common: Common::Remote,
        text: "\
Re-reads every blob and manifest now (or only those of --repo), re-hashes each against its
digest and quarantines what is damaged (never served, mounted or deduplicated against;
healed from a mirror that has it, else by a push of the same content); --status shows the
last full pass, the pass under way and what each quarantined object breaks. On a stopped
store it first runs redb's own integrity check of the file. --json prints the report as
JSON.

Example:
  outpost scrub --status",
    },
    Entry {
        name: "audit",
        usage:
            "audit [--since T] [--repo R] [--user U] [--json] | audit --pulls [--repo R] [--json]",
        summary: "show the audit trail: who changed what, from where, when",
        common: Common::Remote,
        text: "\
Shows the audit trail kept in the store, oldest first: manifest and tag pushes (with the
digest a tag moved from and to), deletes, mounts, repository and key operations, user and
settings changes, GC deletions, failed and rate-limited logins; each with who, from which
address and when. --since T keeps records from T on (a date and time, or a duration back
from now such as 2h or 7d); --repo R those about repository R; --user U those made by U.
--json prints the records as JSON. The trail has a bounded size (the oldest dropped first).
--pulls shows instead how often each tag and digest was pulled (manifest GETs), and when last.
Here --user is that filter: to sign in to a remote registry, set $OUTPOST_USER (an admin)
and $OUTPOST_PASSWORD.

Example:
  outpost audit --since 24h --repo plant-a/web --server https://gw1:5000",
    },
    Entry {
        name: "compact",
        usage: "compact [COMMON]",
        summary: "give the store file's free pages back to the filesystem",
        common: Common::Local,
        text: "\
Gives the store file's free pages back to the filesystem. It needs the store to itself:
stop the registry first.

Example:
  systemctl stop outpost && outpost compact --config /etc/outpost/outpost.json",
    },
];

/// The COMMON options of the commands that reach a running registry.
const REMOTE: &str = "\
COMMON options: --config FILE, --listen ADDR, --data-dir DIR, --master-key-file FILE,
--server URL, --user NAME, --ca-file FILE.
Without --server, the command goes by the store in the data directory, never by whatever
answers on a port: the registry serving it, through its admin socket (admin.sock in the data
directory: its user and root may use it, whatever the access rules say), or the store itself
when no registry serves it. With no store there it says so. A registry holding the store
without an admin socket is named with --server.
--server URL names a registry elsewhere: http://HOST:PORT or https://HOST:PORT. With auth on
there, --user NAME (or $OUTPOST_USER) signs in as that user (an admin, auth.admins, for
everything but export and import); the password comes from $OUTPOST_PASSWORD, else the
terminal (not echoed), else the first line of stdin. --ca-file FILE (PEM) trusts the CA of an https registry whose
certificate the system does not trust, e.g. one made by outpost tls self-signed.";

/// The COMMON options of the commands that need the stopped store.
const LOCAL: &str = "\
COMMON options: --config FILE, --listen ADDR, --data-dir DIR, --master-key-file FILE: they
name the store, which this command needs to itself (stop the registry first).";

/// The overview: every command on one line.
pub fn overview() -> String {
    let mut s = String::from(
        "outpost: an OCI container registry for edge sites\n\nUsage: outpost COMMAND [ARGS]\n\nCommands:\n",
    );
    for e in COMMANDS {
        s.push_str(&format!("  {:<16} {}\n", e.name, e.summary));
    }
    s.push_str(&format!(
        "  {:<16} {}\n  {:<16} {}\n\n",
        "help [COMMAND]",
        "this overview, or a command's usage and an example",
        "--version",
        "the version"
    ));
    s.push_str(
        "Management commands work on the local registry (through its admin socket) or its \
         stopped store,\nor on a registry elsewhere with --server https://HOST:PORT --user \
         NAME [--ca-file FILE].\n\nRun 'outpost help COMMAND' (or 'outpost COMMAND --help') \
         for more.",
    );
    s
}

/// The help of `list` (one command, or a group's): each usage and text, then the COMMON
/// options once.
fn pages(list: &[&Entry]) -> String {
    let mut s = list
        .iter()
        .map(|e| format!("Usage: outpost {}\n\n{}\n", e.usage, e.text))
        .collect::<Vec<_>>()
        .join("\n");
    for (kind, text) in [(Common::Remote, REMOTE), (Common::Local, LOCAL)] {
        if list.iter().any(|e| e.common == kind) {
            s.push('\n');
            s.push_str(text);
            s.push('\n');
        }
    }
    s
}

/// The entries `words` name: one command, or every subcommand of a group (`user`).
fn entries(words: &[&str]) -> Vec<&'static Entry> {
    let topic = words.join(" ");
    COMMANDS
        .iter()
        .filter(|e| e.name == topic || e.name.starts_with(&format!("{topic} ")))
        .collect()
}

/// The command (or group) that the longest prefix of `words` names, for "Try 'outpost help
/// …'" after a usage error.
pub fn topic(words: &[String]) -> Option<String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    (1..=words.len().min(2))
        .rev()
        .map(|n| &words[..n])
        .find(|w| !entries(w).is_empty())
        .map(|w| w.join(" "))
}

/// `outpost help [WORDS]`: the overview, or the help of what `words` name.
pub fn print(words: &[String]) -> Result<(), String> {
    // `outpost help help` asks what the overview answers.
    if words.is_empty() || words == ["help"] {
        out!("{}", overview());
        return Ok(());
    }
    let Some(topic) = topic(words) else {
        return Err(format!("there is no command {:?}", words.join(" ")));
    };
    let words: Vec<&str> = topic.split(' ').collect();
    out!("{}", pages(&entries(&words)).trim_end());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_has_a_page_and_an_example() {
        for e in super::COMMANDS {
            assert!(e.text.contains("Example:\n  "), "{}", e.name);
            assert!(super::overview().contains(e.name));
        }
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(super::topic(&words("gc --x")).as_deref(), Some("gc"));
        assert_eq!(
            super::topic(&words("user add bob")).as_deref(),
            Some("user add")
        );
        assert_eq!(super::topic(&words("user frob")).as_deref(), Some("user"));
        assert_eq!(super::topic(&words("frob")), None);
    }
}
