//! Outpost: an embedded, single-binary OCI container registry for edge sites.

mod audit;
mod auth;
mod cli;
mod clock;
mod config;
mod crypto;
mod digest;
mod events;
mod gc;
mod http;
mod memory;
mod mirror;
mod net;
mod quota;
mod registry;
mod scrub;
mod server;
mod settings;
mod storage;
mod systemd;
mod tls;
mod units;

use config::{parse_size, Overrides, Size, Toggle};
use crypto::Algorithm;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
outpost: an OCI container registry for edge sites

Usage: outpost serve [OPTIONS]
       outpost settings [COMMON] [NAME=VALUE ...]
       outpost repo create NAME [--key KEY [--algorithm ALG]] [COMMON]
       outpost repo delete NAME [--erase] [COMMON]
       outpost repo move NAME (--key KEY [--algorithm ALG] | --plaintext) [COMMON]
       outpost key list [COMMON]
       outpost key generate FILE
       outpost key rotate [--new-master-key FILE] [COMMON]
       outpost user add|passwd|del NAME [COMMON]
       outpost user list [COMMON]
       outpost tls self-signed --host NAME [--host NAME ...] [--out DIR] [--days N] [COMMON]
       outpost export IMAGE... -o FILE.tar|DIR [--platform P,...|--all-platforms] [LOGIN] [COMMON]
       outpost import FILE.tar|DIR [--repo NAME[:TAG]] [--platform P,...] [LOGIN] [COMMON]
       outpost mirror run [NAME] [COMMON]
       outpost mirror status [COMMON]
       outpost gc [--dry-run] [--json] [COMMON]
       outpost du [--json] [COMMON]
       outpost scrub [--repo NAME] [--status] [--json] [COMMON]
       outpost compact [COMMON]
       outpost --version

Options for serve (flags override the config file, which overrides the defaults):
  --config FILE             JSON config file (keys: listen, dataDir, maxConnections,
                            headerTimeout, idleTimeout, ioTimeout, minTransferRate,
                            workers, cacheSize, chunkSize, maxManifestSize, uploadTtl,
                            minFreeSpace, blobMounting, automaticMount, masterKeyFile,
                            encryption, auth, access, tls, mirrors, gcGracePeriod,
                            gcInterval, lifecycle, immutableTags, scrubRate,
                            scrubInterval)
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
  --cache-size SIZE         database page cache           [default: 4MiB]
  --chunk-size SIZE         stored chunk size, a power of two [default: 256KiB]
  --max-manifest-size SIZE  largest manifest accepted     [default: 4MiB]
  --min-free-space SIZE     refuse uploads below this free disk [default: 64MiB]
  --upload-ttl DURATION     drop upload sessions idle this long [default: 24h]
  --blob-mounting enabled|disabled   honour cross-repository mounts [default: enabled]
  --automatic-mount enabled|disabled mounts without from= search all repositories
                                     [default: enabled]
  -h, --help                this help

COMMON options of the other commands: --config FILE, --listen ADDR, --data-dir DIR,
--master-key-file FILE, and (settings, repo create/delete, key list, user, export, import,
mirror, gc, du, scrub) --server URL.
Without --server, these commands go by the store in the data directory, never by whatever
answers on a port: the registry serving it, through its admin socket (admin.sock in the
data directory: its user and root may use it, whatever the access rules say), or at the
configured listen address (plain HTTP) if that registry has no socket; the store itself
when no registry serves it. With no store there they say so (user add and mirror run
create one). --server URL names a registry elsewhere. repo move and key rotate need the
store to themselves: stop the registry first.

settings shows the switches that can change while the registry runs (blobMounting,
automaticMount) and sets them: NAME=enabled, NAME=disabled, or NAME=default (back to the
config file).

repo create makes a repository with data key KEY (created if new; ALG is aes-256-gcm, the
default, or chacha20-poly1305), or plaintext without --key. repo delete removes a repository
and what only it holds; --erase also destroys its key (crypto-erase), if no other repository
uses it. repo move re-encrypts a repository under another key, or to plaintext.

user add and user passwd read the password from the terminal (asked twice, not echoed) or
the first line of stdin, never from the command line; it is stored as a PBKDF2-SHA256 hash.
user list also shows the users of auth.htpasswd.

tls self-signed writes DIR/outpost.crt and DIR/outpost.key (DIR defaults to the current
directory; N days, default 825) for the given host names or IP addresses, and prints the
tls config lines and how to make docker, podman and containerd trust the certificate.

key generate writes a new master key file (mode 600). key rotate re-wraps every data key
under a new master key, without re-encrypting data: without --new-master-key it generates one
and replaces masterKeyFile (a crash at any point leaves a store one of the two keys opens);
with --new-master-key FILE both keys open the store until outpost first starts with FILE.

export writes the images (REPO:TAG, REPO@DIGEST, or REPO for all its tags) as an OCI image
layout: a tar file if the name ends in .tar, else a directory. --platform keeps only those
platforms of multi-platform images (e.g. linux/arm64,linux/arm/v7; the index is rewritten);
by default, or with --all-platforms, images are exported whole. import reads an OCI image
layout (tar or directory; what skopeo copy oci-archive:/oci: and docker save write) or an
older docker save archive, naming repositories from the archive's annotations or --repo.
Every blob is verified before it is stored; blobs already stored are not written again, so
an interrupted import can simply be run again. Both work on the store when no registry
serves it, else through that registry's HTTP API at the configured listen address. LOGIN: --user U when auth is on (the
password comes from $OUTPOST_PASSWORD, the terminal, or stdin) and --ca-file FILE for an
https --server whose certificate the system does not trust (the local registry's own
tls.certFile is trusted). Progress shows on a terminal.

gc runs a garbage collection pass now and prints what it deleted: images that the config's
lifecycle rules expire, blob links no manifest lists once older than gcGracePeriod, blobs
whose last link went, repositories left empty. --dry-run prints what it would delete and the
bytes that would be freed, deleting nothing. On a stopped store the rules come from
--config. du shows per repository the bytes it links, holds alone and shares, and the
store's file size against its live bytes. compact (registry stopped) gives the file's free
pages back to the filesystem. --json prints the report as JSON.

scrub re-reads every blob and manifest now (or only those of --repo), re-hashes each
against its digest and quarantines what is damaged (never served, mounted or deduplicated
against; healed from a mirror that has it, else by a push of the same content); --status
shows the last full pass, the pass under way and what each quarantined object breaks. On a
stopped store it first runs redb's own integrity check of the file.

mirror run runs one sync pass of the config's mirrors (or NAME) now; mirror status shows each
mirror's last pass, totals and pull-through cache activity.

SIZE is bytes or a number with KiB, MiB or GiB; DURATION is seconds or a number with s, m, h, d. Logs go to stderr; set RUST_LOG (e.g. debug).";

/// Options of the commands that manage a registry (all but serve).
struct Common {
    config: Option<PathBuf>,
    flags: Box<Overrides>,
    server: Option<String>,
}

impl Common {
    /// The configuration: file, then flags, over the defaults.
    fn resolve(&self) -> Result<config::Config, String> {
        let file = match &self.config {
            Some(p) => Overrides::from_file(p)?,
            None => Overrides::default(),
        };
        let flags = Overrides {
            listen: self.flags.listen.clone(),
            data_dir: self.flags.data_dir.clone(),
            master_key_file: self.flags.master_key_file.clone(),
            ..Overrides::default()
        };
        file.merge(flags).resolve()
    }
}

enum Command {
    Serve {
        config: Option<PathBuf>,
        flags: Box<Overrides>,
    },
    Settings(Common, Vec<String>),
    RepoCreate(Common, String, Option<(String, Option<Algorithm>)>),
    RepoDelete(Common, String, bool),
    RepoMove(Common, String, Option<(String, Option<Algorithm>)>),
    KeyList(Common),
    KeyGenerate(PathBuf),
    KeyRotate(Common, Option<PathBuf>),
    UserPut(Common, String, bool),
    UserDel(Common, String),
    UserList(Common),
    TlsSelfSigned(Common, Vec<String>, PathBuf, u64),
    Export(
        Common,
        cli::mirror::Login,
        Vec<String>,
        PathBuf,
        Option<Vec<mirror::Platform>>,
    ),
    Import(
        Common,
        cli::mirror::Login,
        PathBuf,
        Option<String>,
        Option<Vec<mirror::Platform>>,
    ),
    MirrorRun(Common, Option<String>),
    MirrorStatus(Common),
    Gc(Common, bool, bool),
    /// `scrub`: repository, --status, --json.
    Scrub(Common, Option<String>, bool, bool),
    Du(Common, bool),
    Audit(Common, cli::audit::Query),
    Compact(Common),
    Help,
    Version,
}

/// Every argument, before it is checked against what the command takes.
#[derive(Default)]
struct Args {
    words: Vec<String>,
    config: Option<PathBuf>,
    server: Option<String>,
    flags: Overrides,
    key: Option<String>,
    algorithm: Option<Algorithm>,
    plaintext: bool,
    erase: bool,
    new_master_key: Option<PathBuf>,
    hosts: Vec<String>,
    out: Option<PathBuf>,
    days: Option<u64>,
    output: Option<PathBuf>,
    platforms: Option<Vec<mirror::Platform>>,
    all_platforms: bool,
    repo: Option<String>,
    user: Option<String>,
    ca_file: Option<PathBuf>,
    dry_run: bool,
    json: bool,
    status: bool,
    since: Option<String>,
    pulls: bool,
    /// Long options given, to refuse those the command does not take.
    seen: Vec<String>,
}

fn parse_args() -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut a = Args::default();
    let toggle = |v: std::ffi::OsString, flag: &str| -> Result<Option<String>, lexopt::Error> {
        let s = v.string()?;
        Toggle::parse(&s).map_err(|e| format!("{flag}: {e}"))?;
        Ok(Some(s))
    };
    let size = |v: std::ffi::OsString, flag: &str| -> Result<Option<Size>, lexopt::Error> {
        let s = v.string()?;
        parse_size(&s).map_err(|e| format!("{flag}: {e}"))?;
        Ok(Some(Size::Text(s)))
    };
    let duration = |v: std::ffi::OsString, flag: &str| -> Result<Option<String>, lexopt::Error> {
        let s = v.string()?;
        config::parse_duration(&s).map_err(|e| format!("{flag}: {e}"))?;
        Ok(Some(s))
    };
    while let Some(arg) = parser.next()? {
        if let Long(f) = &arg {
            a.seen.push(f.to_string());
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(v) => a.words.push(v.string()?),
            Long("server") => a.server = Some(parser.value()?.string()?),
            Long("config") => a.config = Some(PathBuf::from(parser.value()?)),
            Long("listen") => a.flags.listen = Some(parser.value()?.string()?),
            Long("data-dir") => a.flags.data_dir = Some(PathBuf::from(parser.value()?)),
            Long("master-key-file") => {
                a.flags.master_key_file = Some(PathBuf::from(parser.value()?))
            }
            Long("key") => {
                let k = parser.value()?.string()?;
                if !config::valid_key_name(&k) {
                    return Err(
                        format!("--key {k:?}: a key name is 1-64 of a-z A-Z 0-9 . _ -").into(),
                    );
                }
                a.key = Some(k);
            }
            Long("algorithm") => {
                let v = parser.value()?.string()?;
                a.algorithm = Some(Algorithm::parse(&v).map_err(|e| format!("--algorithm: {e}"))?);
            }
            Long("plaintext") => a.plaintext = true,
            Long("erase") => a.erase = true,
            Long("new-master-key") => a.new_master_key = Some(PathBuf::from(parser.value()?)),
            Long("host") => a.hosts.push(parser.value()?.string()?),
            Long("out") => a.out = Some(PathBuf::from(parser.value()?)),
            Short('o') | Long("output") => {
                a.seen.push("output".into());
                a.output = Some(PathBuf::from(parser.value()?))
            }
            Long("platform") => {
                let v = parser.value()?.string()?;
                let list =
                    mirror::Platform::parse_list(&v).map_err(|e| format!("--platform: {e}"))?;
                a.platforms.get_or_insert_with(Vec::new).extend(list);
            }
            Long("all-platforms") => a.all_platforms = true,
            Long("dry-run") => a.dry_run = true,
            Long("json") => a.json = true,
            Long("status") => a.status = true,
            Long("since") => a.since = Some(parser.value()?.string()?),
            Long("pulls") => a.pulls = true,
            Long("repo") => a.repo = Some(parser.value()?.string()?),
            Long("user") => a.user = Some(parser.value()?.string()?),
            Long("ca-file") => a.ca_file = Some(PathBuf::from(parser.value()?)),
            Long("days") => {
                let d: u64 = parser.value()?.parse()?;
                if !(1..=36500).contains(&d) {
                    return Err("--days: give 1 to 36500".into());
                }
                a.days = Some(d);
            }
            Long("blob-mounting") => {
                a.flags.blob_mounting = toggle(parser.value()?, "--blob-mounting")?
            }
            Long("automatic-mount") => {
                a.flags.automatic_mount = toggle(parser.value()?, "--automatic-mount")?
            }
            Long("workers") => a.flags.workers = Some(parser.value()?.parse()?),
            Long("cache-size") => a.flags.cache_size = size(parser.value()?, "--cache-size")?,
            Long("chunk-size") => a.flags.chunk_size = size(parser.value()?, "--chunk-size")?,
            Long("min-free-space") => {
                a.flags.min_free_space = size(parser.value()?, "--min-free-space")?
            }
            Long("io-timeout") => a.flags.io_timeout = duration(parser.value()?, "--io-timeout")?,
            Long("header-timeout") => {
                a.flags.header_timeout = duration(parser.value()?, "--header-timeout")?
            }
            Long("idle-timeout") => {
                a.flags.idle_timeout = duration(parser.value()?, "--idle-timeout")?
            }
            Long("max-connections") => a.flags.max_connections = Some(parser.value()?.parse()?),
            Long("min-transfer-rate") => {
                let v = parser.value()?.string()?;
                parse_size(v.trim_end_matches("/s"))
                    .map_err(|e| format!("--min-transfer-rate: {e} (bytes per second)"))?;
                a.flags.min_transfer_rate = Some(Size::Text(v));
            }
            Long("upload-ttl") => a.flags.upload_ttl = duration(parser.value()?, "--upload-ttl")?,
            Long("max-manifest-size") => {
                a.flags.max_manifest_size = size(parser.value()?, "--max-manifest-size")?
            }
            _ => return Err(arg.unexpected()),
        }
    }
    command(a)
}

/// The command `a` names, after checking that it takes the arguments given.
fn command(a: Args) -> Result<Command, lexopt::Error> {
    const COMMON: &[&str] = &["config", "listen", "data-dir", "master-key-file"];
    const ONLINE: &[&str] = &["config", "listen", "data-dir", "master-key-file", "server"];
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let (name, takes, positionals): (&str, &[&str], usize) = match words.as_slice() {
        [] => return Err("missing command (try: outpost serve)".into()),
        ["serve", ..] => ("serve", &[], 0),
        ["settings", ..] => ("settings", ONLINE, usize::MAX),
        ["repo", "create", ..] => ("repo create", &["key", "algorithm"], 1),
        ["repo", "delete", ..] => ("repo delete", &["erase"], 1),
        ["repo", "move", ..] => ("repo move", &["key", "algorithm", "plaintext"], 1),
        ["key", "list", ..] => ("key list", &[], 0),
        ["key", "generate", ..] => ("key generate", &[], 1),
        ["key", "rotate", ..] => ("key rotate", &["new-master-key"], 0),
        ["user", "add", ..] => ("user add", &[], 1),
        ["user", "passwd", ..] => ("user passwd", &[], 1),
        ["user", "del", ..] => ("user del", &[], 1),
        ["user", "list", ..] => ("user list", &[], 0),
        ["tls", "self-signed", ..] => ("tls self-signed", &["host", "out", "days"], 0),
        ["export", ..] => (
            "export",
            &[
                "output",
                "platform",
                "all-platforms",
                "user",
                "server",
                "ca-file",
            ],
            usize::MAX,
        ),
        ["import", ..] => (
            "import",
            &["repo", "platform", "user", "server", "ca-file"],
            1,
        ),
        ["mirror", "run", ..] => ("mirror run", &["server"], usize::MAX),
        ["mirror", "status", ..] => ("mirror status", &["server"], 0),
        ["gc", ..] => ("gc", &["dry-run", "json"], 0),
        ["du", ..] => ("du", &["json"], 0),
        ["audit", ..] => ("audit", &["since", "repo", "user", "pulls", "json"], 0),
        ["scrub", ..] => ("scrub", &["repo", "status", "json"], 0),
        ["compact", ..] => ("compact", &[], 0),
        ["repo" | "key" | "user" | "tls" | "mirror", sub, ..] => {
            return Err(format!(
                "unknown command {} {sub:?} (repo: create, delete, move; key: list, generate, \
                 rotate; user: add, passwd, del, list; tls: self-signed; mirror: run, status)",
                words[0]
            )
            .into())
        }
        ["repo" | "key" | "user" | "tls" | "mirror"] => {
            return Err(format!("{} needs a subcommand (see --help)", words[0]).into())
        }
        [other, ..] => {
            return Err(format!(
                "unknown command {other:?} (commands: serve, settings, repo, key, user, tls, \
                 export, import, mirror, gc, du, scrub, compact)"
            )
            .into())
        }
    };
    let skip = name.split(' ').count();
    let rest = &words[skip..];
    if name != "serve" {
        let common = match name {
            "repo create" | "repo delete" | "key list" | "user add" | "user passwd"
            | "user del" | "user list" | "gc" | "du" | "scrub" | "audit" => ONLINE,
            "key generate" => &[][..],
            _ => COMMON,
        };
        if let Some(f) = a
            .seen
            .iter()
            .find(|f| !takes.contains(&f.as_str()) && !common.contains(&f.as_str()))
        {
            return Err(format!("--{f} is not an option of {name} (see --help)").into());
        }
        if positionals != usize::MAX && rest.len() != positionals {
            let what = if positionals == 0 {
                "no arguments".to_owned()
            } else {
                "one argument".to_owned()
            };
            return Err(format!("{name} takes {what} (see --help)").into());
        }
    } else if let Some(extra) = rest.first() {
        return Err(format!("serve takes no argument {extra:?} (options start with --)").into());
    } else if let Some(f) = a.seen.iter().find(|f| {
        matches!(
            f.as_str(),
            "server"
                | "key"
                | "algorithm"
                | "plaintext"
                | "erase"
                | "new-master-key"
                | "host"
                | "out"
                | "days"
                | "output"
                | "platform"
                | "all-platforms"
                | "repo"
                | "user"
                | "ca-file"
                | "dry-run"
                | "json"
        )
    }) {
        return Err(format!("--{f} is not an option of serve (see --help)").into());
    }
    let key = a.key.clone().map(|k| (k, a.algorithm));
    if a.algorithm.is_some() && a.key.is_none() {
        return Err("--algorithm needs --key".into());
    }
    let login = cli::mirror::Login {
        server: a.server.clone(),
        user: a.user,
        ca_file: a.ca_file,
    };
    let common = Common {
        config: a.config,
        flags: Box::new(a.flags),
        server: a.server,
    };
    let arg = || rest.first().map(|s| s.to_string()).unwrap_or_default();
    let repo = |what: &str| -> Result<String, lexopt::Error> {
        let n = arg();
        if registry::names::valid_name(&n) {
            Ok(n)
        } else {
            Err(format!("{what}: {n:?} is not a repository name (e.g. plant-a/web)").into())
        }
    };
    Ok(match name {
        "serve" => Command::Serve {
            config: common.config,
            flags: common.flags,
        },
        "settings" => Command::Settings(common, rest.iter().map(|s| s.to_string()).collect()),
        "repo create" => Command::RepoCreate(common, repo(name)?, key),
        "repo delete" => Command::RepoDelete(common, repo(name)?, a.erase),
        "repo move" => {
            if key.is_some() == a.plaintext {
                return Err("repo move needs --key KEY or --plaintext".into());
            }
            Command::RepoMove(common, repo(name)?, key)
        }
        "key list" => Command::KeyList(common),
        "key generate" => Command::KeyGenerate(PathBuf::from(arg())),
        "user add" | "user passwd" | "user del" => {
            let user = arg();
            if !auth::valid_user_name(&user) {
                return Err(format!(
                    "{name}: {user:?} is not a user name (1-64 of a-z A-Z 0-9 . _ @ -; not \
                     anonymous or authenticated)"
                )
                .into());
            }
            match name {
                "user del" => Command::UserDel(common, user),
                _ => Command::UserPut(common, user, name == "user add"),
            }
        }
        "user list" => Command::UserList(common),
        "tls self-signed" => {
            if a.hosts.is_empty() {
                return Err(
                    "tls self-signed needs --host NAME (a DNS name or IP address \
                            clients use to reach the registry; repeat for more)"
                        .into(),
                );
            }
            Command::TlsSelfSigned(
                common,
                a.hosts,
                a.out.unwrap_or_else(|| PathBuf::from(".")),
                a.days.unwrap_or(825),
            )
        }
        "export" => {
            if rest.is_empty() {
                return Err(
                    "export needs at least one IMAGE (REPO, REPO:TAG or REPO@DIGEST)".into(),
                );
            }
            let Some(out) = a.output else {
                return Err("export needs -o FILE.tar or -o DIRECTORY".into());
            };
            if a.all_platforms && a.platforms.is_some() {
                return Err("give --platform or --all-platforms, not both".into());
            }
            Command::Export(
                common,
                login,
                rest.iter().map(|s| s.to_string()).collect(),
                out,
                a.platforms,
            )
        }
        "import" => Command::Import(common, login, PathBuf::from(arg()), a.repo, a.platforms),
        "mirror run" => {
            if rest.len() > 1 {
                return Err("mirror run takes at most one NAME".into());
            }
            Command::MirrorRun(common, rest.first().map(|s| s.to_string()))
        }
        "mirror status" => Command::MirrorStatus(common),
        "gc" => Command::Gc(common, a.dry_run, a.json),
        "du" => Command::Du(common, a.json),
        "audit" => Command::Audit(
            common,
            cli::audit::Query::new(a.since, a.repo, login.user, a.pulls, a.json)?,
        ),
        "scrub" => Command::Scrub(common, a.repo, a.status, a.json),
        "compact" => Command::Compact(common),
        _ => Command::KeyRotate(common, a.new_master_key),
    })
}

fn main() -> ExitCode {
    memory::limit_arenas();
    let journal = systemd::stderr_is_journal();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        // The journal adds its own timestamps; "<N>" gives each line its priority.
        logger.format(|f, r| {
            use std::io::Write;
            let priority = systemd::journal_priority(r.level());
            writeln!(f, "<{priority}>{}: {}", r.target(), r.args())
        });
    }
    logger.init();
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outpost: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Version => {
            println!("outpost {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve { config, flags } => config
            .map_or(Ok(Overrides::default()), |p| Overrides::from_file(&p))
            .map(|file| file.merge(*flags))
            .and_then(Overrides::resolve)
            .and_then(server::run),
        Command::Settings(c, changes) => c
            .resolve()
            .and_then(|cfg| cli::settings(&cfg, c.server.as_deref(), &changes)),
        Command::RepoCreate(c, name, key) => c
            .resolve()
            .and_then(|cfg| cli::repo_create(&cfg, c.server.as_deref(), &name, key)),
        Command::RepoDelete(c, name, erase) => c
            .resolve()
            .and_then(|cfg| cli::repo_delete(&cfg, c.server.as_deref(), &name, erase)),
        Command::RepoMove(c, name, key) => {
            c.resolve().and_then(|cfg| cli::repo_move(&cfg, &name, key))
        }
        Command::KeyList(c) => c
            .resolve()
            .and_then(|cfg| cli::key_list(&cfg, c.server.as_deref())),
        Command::KeyGenerate(path) => cli::key_generate(&path),
        Command::KeyRotate(c, new) => c
            .resolve()
            .and_then(|cfg| cli::key_rotate(&cfg, new.as_deref())),
        Command::UserPut(c, user, create) => c
            .resolve()
            .and_then(|cfg| cli::users::put(&cfg, c.server.as_deref(), &user, create)),
        Command::UserDel(c, user) => c
            .resolve()
            .and_then(|cfg| cli::users::delete(&cfg, c.server.as_deref(), &user)),
        Command::UserList(c) => c
            .resolve()
            .and_then(|cfg| cli::users::list(&cfg, c.server.as_deref())),
        Command::Export(c, login, images, out, platforms) => c
            .resolve()
            .and_then(|cfg| cli::mirror::export(&cfg, &login, &images, &out, platforms)),
        Command::Import(c, login, input, repo, platforms) => c
            .resolve()
            .and_then(|cfg| cli::mirror::import(&cfg, &login, &input, repo.as_deref(), platforms)),
        Command::MirrorRun(c, name) => c
            .resolve()
            .and_then(|cfg| cli::mirror::run(&cfg, c.server.as_deref(), name.as_deref())),
        Command::MirrorStatus(c) => c
            .resolve()
            .and_then(|cfg| cli::mirror::status(&cfg, c.server.as_deref())),
        Command::Gc(c, dry_run, json) => c
            .resolve()
            .and_then(|cfg| cli::gc::gc(&cfg, c.server.as_deref(), dry_run, json)),
        Command::Du(c, json) => c
            .resolve()
            .and_then(|cfg| cli::gc::du(&cfg, c.server.as_deref(), json)),
        Command::Audit(c, q) => c
            .resolve()
            .and_then(|cfg| cli::audit::audit(&cfg, c.server.as_deref(), &q)),
        Command::Scrub(c, repo, status, json) => c.resolve().and_then(|cfg| {
            cli::scrub::scrub(&cfg, c.server.as_deref(), repo.as_deref(), status, json)
        }),
        Command::Compact(c) => c.resolve().and_then(|cfg| cli::gc::compact(&cfg)),
        Command::TlsSelfSigned(c, hosts, out, days) => c
            .resolve()
            .and_then(|cfg| cli::certs::self_signed(&cfg, &hosts, &out, days)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let priority = if journal { "<3>" } else { "" };
            eprintln!("{priority}outpost: {e}");
            ExitCode::from(1)
        }
    }
}
