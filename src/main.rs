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
mod logging;
mod memory;
mod metrics;
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

/// Options of the commands that manage a registry (all but serve).
struct Common {
    config: Option<PathBuf>,
    flags: Box<Overrides>,
    /// Which registry, and who the command is there (--server, --user, --ca-file).
    login: cli::Login,
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
    Export(Common, Vec<String>, PathBuf, Option<Vec<mirror::Platform>>),
    Import(
        Common,
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
    /// `help [COMMAND...]`, `COMMAND --help`: the words naming what to explain.
    Help(Vec<String>),
    Version,
}

/// A command line that does not parse: one line, and the help topic to point at.
struct Usage {
    message: String,
    topic: Option<String>,
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

fn parse_args() -> Result<Command, Usage> {
    let mut a = Args::default();
    let read = read_args(&mut a);
    let topic = cli::help::topic(&a.words);
    let usage = |e: lexopt::Error| Usage {
        message: e.to_string(),
        topic: topic.clone(),
    };
    match read.map_err(usage)? {
        Some(c) => Ok(c),
        None => command(a).map_err(usage),
    }
}

/// Reads the command line into `a`; a command already if it asks for help or the version.
fn read_args(a: &mut Args) -> Result<Option<Command>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
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
            Short('h') | Long("help") => return Ok(Some(Command::Help(a.words.clone()))),
            Short('V') | Long("version") => return Ok(Some(Command::Version)),
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
            Long("log-format") => {
                let v = parser.value()?.string()?;
                logging::LogFormat::parse(&v).map_err(|e| format!("--log-format: {e}"))?;
                a.flags.log_format = Some(v);
            }
            Long("upload-ttl") => a.flags.upload_ttl = duration(parser.value()?, "--upload-ttl")?,
            Long("max-manifest-size") => {
                a.flags.max_manifest_size = size(parser.value()?, "--max-manifest-size")?
            }
            // Refused once the command is known, naming it ("--foo is not an option of gc").
            Long(_) => {
                let _ = parser.optional_value();
            }
            Short(c) => a.seen.push(format!("-{c}")),
        }
    }
    Ok(None)
}

/// The command `a` names, after checking that it takes the arguments given.
fn command(mut a: Args) -> Result<Command, lexopt::Error> {
    const SERVE: &[&str] = &[
        "config",
        "listen",
        "data-dir",
        "master-key-file",
        "max-connections",
        "header-timeout",
        "idle-timeout",
        "io-timeout",
        "min-transfer-rate",
        "workers",
        "cache-size",
        "chunk-size",
        "max-manifest-size",
        "min-free-space",
        "upload-ttl",
        "blob-mounting",
        "automatic-mount",
        "log-format",
    ];
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    // The command, the options of its own (besides COMMON: see cli::help::COMMANDS) and how
    // many arguments it takes.
    let (name, takes, positionals): (&str, &[&str], usize) = match words.as_slice() {
        [] => return Err("missing command (try: outpost serve)".into()),
        ["help", ..] => return Ok(Command::Help(a.words[1..].to_vec())),
        ["serve", ..] => ("serve", SERVE, 0),
        ["settings", ..] => ("settings", &[], usize::MAX),
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
            &["output", "platform", "all-platforms"],
            usize::MAX,
        ),
        ["import", ..] => ("import", &["repo", "platform"], 1),
        ["mirror", "run", ..] => ("mirror run", &[], usize::MAX),
        ["mirror", "status", ..] => ("mirror status", &[], 0),
        ["gc", ..] => ("gc", &["dry-run", "json"], 0),
        ["du", ..] => ("du", &["json"], 0),
        ["audit", ..] => ("audit", &["since", "repo", "user", "pulls", "json"], 0),
        ["scrub", ..] => ("scrub", &["repo", "status", "json"], 0),
        ["compact", ..] => ("compact", &[], 0),
        [group, rest @ ..] => return Err(unknown(group, rest.first().copied()).into()),
    };
    let skip = name.split(' ').count();
    let rest = &words[skip..];
    let common = cli::help::COMMANDS
        .iter()
        .find(|e| e.name == name)
        .map_or(&[][..], |e| e.common.options());
    if let Some(f) = a
        .seen
        .iter()
        .find(|f| !takes.contains(&f.as_str()) && !common.contains(&f.as_str()))
    {
        let dashes = if f.starts_with('-') { "" } else { "--" };
        return Err(format!("{dashes}{f} is not an option of {name}").into());
    }
    if name == "serve" {
        if let Some(extra) = rest.first() {
            return Err(
                format!("serve takes no argument {extra:?} (options start with --)").into(),
            );
        }
    } else if positionals != usize::MAX && rest.len() != positionals {
        let what = if positionals == 0 {
            "no arguments"
        } else {
            "one argument"
        };
        return Err(format!("{name} takes {what}").into());
    }
    let key = a.key.clone().map(|k| (k, a.algorithm));
    if a.algorithm.is_some() && a.key.is_none() {
        return Err("--algorithm needs --key".into());
    }
    // `audit` takes --user as its filter (the issue's `outpost audit --user U`): it signs in
    // as $OUTPOST_USER only.
    let audit_user = if name == "audit" { a.user.take() } else { None };
    let common = Common {
        config: a.config,
        flags: Box::new(a.flags),
        login: cli::Login {
            server: a.server,
            user: a.user.or_else(|| std::env::var("OUTPOST_USER").ok()),
            ca_file: a.ca_file,
        },
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
                rest.iter().map(|s| s.to_string()).collect(),
                out,
                a.platforms,
            )
        }
        "import" => Command::Import(common, PathBuf::from(arg()), a.repo, a.platforms),
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
            cli::audit::Query::new(a.since, a.repo, audit_user, a.pulls, a.json)?,
        ),
        "scrub" => Command::Scrub(common, a.repo, a.status, a.json),
        "compact" => Command::Compact(common),
        _ => Command::KeyRotate(common, a.new_master_key),
    })
}

/// Why `group` [`sub`] names no command, and which it could have been.
fn unknown(group: &str, sub: Option<&str>) -> String {
    let subs: Vec<&str> = cli::help::COMMANDS
        .iter()
        .filter_map(|e| e.name.strip_prefix(group)?.strip_prefix(' '))
        .collect();
    if subs.is_empty() {
        return format!("there is no command {group:?}");
    }
    match sub {
        None => format!("{group} needs a subcommand: {}", subs.join(", ")),
        Some(s) => format!(
            "there is no command {group} {s:?} ({group}: {})",
            subs.join(", ")
        ),
    }
}

fn main() -> ExitCode {
    memory::limit_arenas();
    let journal = systemd::stderr_is_journal();
    logging::init(journal);
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) => return usage_error(&e.message, e.topic.as_deref()),
    };
    let result = match command {
        Command::Help(words) => {
            if let Err(e) = cli::help::print(&words) {
                return usage_error(&e, None);
            }
            Ok(())
        }
        Command::Version => {
            cli::output::line(format_args!("outpost {}", env!("CARGO_PKG_VERSION")));
            Ok(())
        }
        Command::Serve { config, flags } => config
            .map_or(Ok(Overrides::default()), |p| Overrides::from_file(&p))
            .map(|file| file.merge(*flags))
            .and_then(Overrides::resolve)
            .and_then(server::run),
        Command::Settings(c, changes) => c
            .resolve()
            .and_then(|cfg| cli::settings(&cfg, &c.login, &changes)),
        Command::RepoCreate(c, name, key) => c
            .resolve()
            .and_then(|cfg| cli::repo_create(&cfg, &c.login, &name, key)),
        Command::RepoDelete(c, name, erase) => c
            .resolve()
            .and_then(|cfg| cli::repo_delete(&cfg, &c.login, &name, erase)),
        Command::RepoMove(c, name, key) => {
            c.resolve().and_then(|cfg| cli::repo_move(&cfg, &name, key))
        }
        Command::KeyList(c) => c.resolve().and_then(|cfg| cli::key_list(&cfg, &c.login)),
        Command::KeyGenerate(path) => cli::key_generate(&path),
        Command::KeyRotate(c, new) => c
            .resolve()
            .and_then(|cfg| cli::key_rotate(&cfg, new.as_deref())),
        Command::UserPut(c, user, create) => c
            .resolve()
            .and_then(|cfg| cli::users::put(&cfg, &c.login, &user, create)),
        Command::UserDel(c, user) => c
            .resolve()
            .and_then(|cfg| cli::users::delete(&cfg, &c.login, &user)),
        Command::UserList(c) => c.resolve().and_then(|cfg| cli::users::list(&cfg, &c.login)),
        Command::Export(c, images, out, platforms) => c
            .resolve()
            .and_then(|cfg| cli::mirror::export(&cfg, &c.login, &images, &out, platforms)),
        Command::Import(c, input, repo, platforms) => c.resolve().and_then(|cfg| {
            cli::mirror::import(&cfg, &c.login, &input, repo.as_deref(), platforms)
        }),
        Command::MirrorRun(c, name) => c
            .resolve()
            .and_then(|cfg| cli::mirror::run(&cfg, &c.login, name.as_deref())),
        Command::MirrorStatus(c) => c
            .resolve()
            .and_then(|cfg| cli::mirror::status(&cfg, &c.login)),
        Command::Gc(c, dry_run, json) => c
            .resolve()
            .and_then(|cfg| cli::gc::gc(&cfg, &c.login, dry_run, json)),
        Command::Du(c, json) => c
            .resolve()
            .and_then(|cfg| cli::gc::du(&cfg, &c.login, json)),
        Command::Audit(c, q) => c
            .resolve()
            .and_then(|cfg| cli::audit::audit(&cfg, &c.login, &q)),
        Command::Scrub(c, repo, status, json) => c
            .resolve()
            .and_then(|cfg| cli::scrub::scrub(&cfg, &c.login, repo.as_deref(), status, json)),
        Command::Compact(c) => c.resolve().and_then(|cfg| cli::gc::compact(&cfg)),
        Command::TlsSelfSigned(c, hosts, out, days) => c
            .resolve()
            .and_then(|cfg| cli::certs::self_signed(&cfg, &hosts, &out, days)),
    };
    // Output its reader never took (a closed pipe) is no failure; a write that failed is.
    let result = result.and_then(|()| match cli::output::failure() {
        Some(e) => Err(format!("writing the output: {e}")),
        None => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::print_error(journal, &e);
            ExitCode::from(1)
        }
    }
}

/// A command line that does not parse: one line saying why, and where to read more.
fn usage_error(message: &str, topic: Option<&str>) -> ExitCode {
    let help = topic.map_or("outpost help".to_owned(), |t| format!("outpost help {t}"));
    cli::output::note!("outpost: {message}\nTry '{help}'.");
    ExitCode::from(2)
}
