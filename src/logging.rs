//! Log lines on stderr: env_logger's text (with a priority prefix when stderr is the
//! journal), or with `logFormat: json` one JSON object a line.
//!
//! The logger is installed before the configuration is read (reading it may fail, and that
//! is worth a line), so it holds both formats and switches once the registry knows its
//! choice.

use std::sync::atomic::{AtomicBool, Ordering};

/// `logFormat`: how log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's text lines (the default).
    #[default]
    Text,
    /// One JSON object per line: time, level, target, message, and an access line's fields.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is neither text nor json")),
        }
    }
}

/// True once `logFormat: json` is in force.
static JSON: AtomicBool = AtomicBool::new(false);

/// Both formats behind one filter (`RUST_LOG`, default `info`).
struct Switch {
    text: env_logger::Logger,
    json: env_logger::Logger,
}

impl log::Log for Switch {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        self.text.enabled(m)
    }

    fn log(&self, r: &log::Record<'_>) {
        if JSON.load(Ordering::Relaxed) {
            self.json.log(r)
        } else {
            self.text.log(r)
        }
    }

    fn flush(&self) {
        self.text.flush()
    }
}

/// Installs the logger: text until `set_format` says otherwise. `journal`: stderr goes to
/// the journal, which takes a `<N>` prefix as the line's priority and adds its own time.
pub fn init(journal: bool) {
    let builder =
        || env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    let mut text = builder();
    if journal {
        text.format(|f, r| {
            use std::io::Write;
            let priority = crate::systemd::journal_priority(r.level());
            writeln!(f, "<{priority}>{}: {}", r.target(), r.args())
        });
    }
    let mut json = builder();
    json.format(move |f, r| {
        use std::io::Write;
        let time = time_now();
        let line = json_line(&time, r);
        if journal {
            let priority = crate::systemd::journal_priority(r.level());
            writeln!(f, "<{priority}>{line}")
        } else {
            writeln!(f, "{line}")
        }
    });
    let switch = Switch {
        text: text.build(),
        json: json.build(),
    };
    let level = switch.text.filter();
    if log::set_boxed_logger(Box::new(switch)).is_ok() {
        log::set_max_level(level);
    }
}

/// Switches every later line to `format`.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Prints the error a command ends with (whatever `RUST_LOG` says): a JSON line under
/// `logFormat: json`, else `outpost: ERROR` (with the journal's error priority).
pub fn print_error(journal: bool, e: &str) {
    let priority = if journal { "<3>" } else { "" };
    if JSON.load(Ordering::Relaxed) {
        let time = time_now();
        let line = json_line(
            &time,
            &log::Record::builder()
                .level(log::Level::Error)
                .target("outpost")
                .args(format_args!("{e}"))
                .build(),
        );
        crate::cli::output::note!("{priority}{line}");
    } else {
        crate::cli::output::note!("{priority}outpost: {e}");
    }
}

/// The time now as the JSON lines give it: RFC 3339, UTC, milliseconds.
fn time_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = crate::clock::rfc3339(now.as_secs());
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), now.subsec_millis())
}

/// One record as a JSON object: time, level, target, message, then its key-value fields
/// (an access line's method, path, status, bytes, …).
fn json_line(time: &str, r: &log::Record<'_>) -> String {
    use serde_json::{Map, Value};
    let mut o = Map::new();
    o.insert("time".into(), time.into());
    o.insert(
        "level".into(),
        r.level().as_str().to_ascii_lowercase().into(),
    );
    o.insert("target".into(), r.target().into());
    o.insert("message".into(), r.args().to_string().into());
    struct Fields<'a>(&'a mut Map<String, Value>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            let v = if let Some(n) = value.to_u64() {
                Value::from(n)
            } else if let Some(n) = value.to_i64() {
                Value::from(n)
            } else if let Some(x) = value.to_f64() {
                Value::from(x)
            } else if let Some(b) = value.to_bool() {
                Value::from(b)
            } else {
                Value::from(value.to_string())
            };
            self.0.insert(key.as_str().to_owned(), v);
            Ok(())
        }
    }
    let _ = r.key_values().visit(&mut Fields(&mut o));
    Value::Object(o).to_string()
}
