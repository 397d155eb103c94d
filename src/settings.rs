//! Registry-level switches that an operator can flip while the registry runs (admin API,
//! `outpost settings`). The config file gives each its start value; a runtime change is kept
//! in the store and wins over the file until it is reset (value `null` / `default`).

use crate::config::{Config, Toggle};
use crate::storage::{Store, StoreError};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};

/// One switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `blobMounting`: cross-repository mounts are honoured.
    BlobMounting,
    /// `automaticMount`: a mount without `from` may take the blob from any repository.
    AutomaticMount,
}

impl Key {
    /// Every switch, in display order.
    pub const ALL: [Key; 2] = [Key::BlobMounting, Key::AutomaticMount];

    /// The name used in the config file, the admin API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Key::BlobMounting => "blobMounting",
            Key::AutomaticMount => "automaticMount",
        }
    }

    /// The switch called `name`.
    pub fn parse(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    fn in_config(self, config: &Config) -> bool {
        match self {
            Key::BlobMounting => config.blob_mounting,
            Key::AutomaticMount => config.automatic_mount,
        }
    }
}

/// A change that cannot be applied.
#[derive(Debug)]
pub enum SettingsError {
    /// The request names no such setting or gives a value it cannot take.
    Invalid(String),
    /// Storing the change failed.
    Store(StoreError),
}

impl From<StoreError> for SettingsError {
    fn from(e: StoreError) -> Self {
        SettingsError::Store(e)
    }
}

struct Slot {
    file: bool,
    value: AtomicBool,
    runtime: AtomicBool,
}

/// The current switches: read on every request, changed by the admin API.
pub struct Settings {
    slots: [Slot; 2],
}

impl Settings {
    /// Start values: the config file's, overridden by changes kept in the store.
    pub fn load(config: &Config, store: &Store) -> Result<Settings, StoreError> {
        let settings = Settings {
            slots: Key::ALL.map(|k| Slot {
                file: k.in_config(config),
                value: AtomicBool::new(k.in_config(config)),
                runtime: AtomicBool::new(false),
            }),
        };
        for (name, value) in store.settings()? {
            match (Key::parse(&name), Toggle::parse(&value)) {
                (Some(key), Ok(t)) => {
                    let slot = settings.slot(key);
                    if slot.file != t.on() {
                        log::warn!(
                            "{name} is {value}: set at runtime, overriding the config file's {} \
                             (reset with: outpost settings {name}=default)",
                            Toggle::word(slot.file)
                        );
                    }
                    slot.value.store(t.on(), Ordering::Relaxed);
                    slot.runtime.store(true, Ordering::Relaxed);
                }
                _ => {
                    log::warn!("ignoring stored setting {name}={value:?} this build does not know")
                }
            }
        }
        Ok(settings)
    }

    fn slot(&self, key: Key) -> &Slot {
        &self.slots[key as usize]
    }

    /// Whether `key` is on now.
    pub fn on(&self, key: Key) -> bool {
        self.slot(key).value.load(Ordering::Relaxed)
    }

    /// Every switch: `{"blobMounting": {"value": "enabled", "source": "config", "configFile":
    /// "enabled"}, ...}`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for key in Key::ALL {
            let slot = self.slot(key);
            let source = if slot.runtime.load(Ordering::Relaxed) {
                "runtime"
            } else {
                "config"
            };
            out.insert(
                key.name().to_owned(),
                json!({
                    "value": Toggle::word(slot.value.load(Ordering::Relaxed)),
                    "source": source,
                    "configFile": Toggle::word(slot.file),
                }),
            );
        }
        Value::Object(out)
    }

    /// Applies a JSON merge patch such as `{"blobMounting": "disabled"}` (`null` returns to
    /// the config file's value). All values are checked before any is stored; each takes
    /// effect for the next request.
    pub fn apply(&self, store: &Store, patch: &Value) -> Result<(), SettingsError> {
        let invalid = |m: String| SettingsError::Invalid(m);
        let obj = patch.as_object().ok_or_else(|| {
            invalid("expected a JSON object such as {\"blobMounting\": \"disabled\"}".into())
        })?;
        let mut changes = Vec::new();
        for (name, value) in obj {
            let key = Key::parse(name).ok_or_else(|| {
                let known: Vec<_> = Key::ALL.iter().map(|k| k.name()).collect();
                invalid(format!(
                    "unknown setting {name:?} (known: {})",
                    known.join(", ")
                ))
            })?;
            let value = match value {
                Value::Null => None,
                Value::String(s) if s == "default" => None,
                Value::String(s) => {
                    Some(Toggle::parse(s).map_err(|e| invalid(format!("{name}: {e}")))?)
                }
                other => {
                    return Err(invalid(format!(
                        "{name}: {other} is neither \"enabled\", \"disabled\" nor null"
                    )))
                }
            };
            changes.push((key, value));
        }
        for (key, value) in changes {
            let word = value.map(|t| Toggle::word(t.on()));
            store.set_setting(key.name(), word)?;
            let slot = self.slot(key);
            let on = value.map_or(slot.file, Toggle::on);
            slot.value.store(on, Ordering::Relaxed);
            slot.runtime.store(value.is_some(), Ordering::Relaxed);
            log::info!(
                "setting {} is now {}{}",
                key.name(),
                Toggle::word(on),
                if value.is_some() {
                    " (runtime)"
                } else {
                    " (config file)"
                }
            );
        }
        Ok(())
    }
}
