//! Settings, from (lowest to highest precedence) `courierx.toml`, the environment and the
//! command line. Every value is validated at start-up; a bad one stops the process with one line
//! naming the setting and what is wrong.

use courierx_api::SignupMode;
use courierx_engine::housekeeping::RetentionConfig;
use courierx_engine::{EngineConfig, SecretKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub secret_key: Option<SecretKey>,
    pub signup: SignupMode,
    pub log: String,
    pub log_format: LogFormat,
    pub body_limit: usize,
    /// Decoded bytes of attachments one message may carry.
    pub max_attachment_bytes: usize,
    pub pg_max_connections: u32,
    /// Whether `serve` runs delivery workers in-process (turn off to scale API and `worker`
    /// processes separately).
    pub run_workers: bool,
    /// Extra URL prefixes SNS signing certificates and subscription URLs may come from
    /// (besides AWS's own hosts); for tests and private endpoints.
    pub sns_allowed_url_prefixes: Vec<String>,
    pub engine: EngineConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

fn err(setting: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_string(),
        problem: problem.into(),
    }
}

/// Each setting: its key in `courierx.toml` and its environment variable.
const KEYS: &[(&str, &str)] = &[
    ("listen", "COURIERX_LISTEN"),
    ("data_dir", "COURIERX_DATA_DIR"),
    ("database_url", "DATABASE_URL"),
    ("secret_key", "COURIERX_SECRET_KEY"),
    ("signup", "COURIERX_SIGNUP"),
    ("log", "COURIERX_LOG"),
    ("log_format", "COURIERX_LOG_FORMAT"),
    ("body_limit", "COURIERX_BODY_LIMIT"),
    ("max_attachment_bytes", "COURIERX_MAX_ATTACHMENT_BYTES"),
    ("pg_max_connections", "COURIERX_PG_MAX_CONNECTIONS"),
    ("max_attempts", "COURIERX_MAX_ATTEMPTS"),
    ("backoff_base_ms", "COURIERX_BACKOFF_BASE_MS"),
    ("backoff_max_ms", "COURIERX_BACKOFF_MAX_MS"),
    ("lease_ms", "COURIERX_LEASE_MS"),
    ("worker_concurrency", "COURIERX_WORKER_CONCURRENCY"),
    ("shutdown_grace_ms", "COURIERX_SHUTDOWN_GRACE_MS"),
    ("run_workers", "COURIERX_RUN_WORKERS"),
    ("public_url", "COURIERX_PUBLIC_URL"),
    (
        "sns_allowed_url_prefixes",
        "COURIERX_SNS_ALLOWED_URL_PREFIXES",
    ),
    (
        "retention_messages_days",
        "COURIERX_RETENTION_MESSAGES_DAYS",
    ),
    ("retention_sandbox_days", "COURIERX_RETENTION_SANDBOX_DAYS"),
    (
        "retention_provider_events_days",
        "COURIERX_RETENTION_PROVIDER_EVENTS_DAYS",
    ),
    (
        "housekeeping_interval_seconds",
        "COURIERX_HOUSEKEEPING_INTERVAL_SECONDS",
    ),
];

/// Raw values by setting key, before parsing.
#[derive(Debug, Default, Clone)]
pub struct RawSettings(pub BTreeMap<String, String>);

impl RawSettings {
    /// Reads `courierx.toml` (when present or named) and the environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut raw = Self::default();
        let (path, required) = match config_file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("courierx.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                    err(
                        "config file",
                        format!("{}: {}", path.display(), e.message()),
                    )
                })?;
                for (k, v) in table {
                    if !KEYS.iter().any(|(key, _)| *key == k) {
                        return Err(err(&k, format!("unknown setting in {}", path.display())));
                    }
                    let s = match v {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(i) => i.to_string(),
                        other => {
                            return Err(err(
                                &k,
                                format!("must be a string or integer, not {}", other.type_str()),
                            ));
                        }
                    };
                    raw.0.insert(k, s);
                }
            }
            Err(e) if required || e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err("config file", format!("{}: {e}", path.display())));
            }
            Err(_) => {}
        }
        for (key, env) in KEYS {
            if let Ok(v) = std::env::var(env) {
                raw.0.insert((*key).to_string(), v);
            }
        }
        Ok(raw)
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_string(), value.into());
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty())
    }

    fn name(key: &str) -> String {
        KEYS.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, env)| (*env).to_string())
            .unwrap_or_else(|| key.to_string())
    }

    fn num<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &self,
        key: &str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(s) => match s.trim().parse::<T>() {
                Ok(v) if v >= min && v <= max => Ok(v),
                _ => Err(err(
                    &Self::name(key),
                    format!("must be a whole number from {min} to {max}, got {s:?}"),
                )),
            },
        }
    }

    pub fn parse(&self) -> Result<Settings, ConfigError> {
        let listen = match self.get("listen") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(s) => s.parse().map_err(|_| {
                err(
                    &Self::name("listen"),
                    format!("must be an address like 127.0.0.1:8080, got {s:?}"),
                )
            })?,
        };
        let data_dir = PathBuf::from(self.get("data_dir").unwrap_or("./data"));
        let database_url = match self.get("database_url") {
            None => None,
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Some(u.to_string())
            }
            Some(u) if u.starts_with("sqlite:") => {
                return Err(err(
                    "DATABASE_URL",
                    format!(
                        "for SQLite leave DATABASE_URL unset and use COURIERX_DATA_DIR (got {u:?})"
                    ),
                ));
            }
            Some(_) => {
                return Err(err(
                    "DATABASE_URL",
                    "must be a postgres:// URL (leave it unset for the embedded SQLite)",
                ));
            }
        };
        let secret_key = match self.get("secret_key") {
            None => None,
            Some(s) => Some(
                SecretKey::from_base64(s).map_err(|e| err("COURIERX_SECRET_KEY", e.to_string()))?,
            ),
        };
        if database_url.is_some() && secret_key.is_none() {
            return Err(err(
                "COURIERX_SECRET_KEY",
                "is required with PostgreSQL (base64 of 32 random bytes, e.g. `openssl rand -base64 32`)",
            ));
        }
        let signup = match self.get("signup").unwrap_or("first_user") {
            "open" => SignupMode::Open,
            "first_user" => SignupMode::FirstUser,
            "closed" => SignupMode::Closed,
            other => {
                return Err(err(
                    "COURIERX_SIGNUP",
                    format!("must be open, first_user or closed, got {other:?}"),
                ));
            }
        };
        let log = self.get("log").unwrap_or("info").to_string();
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(err(
                "COURIERX_LOG",
                format!("is not a valid log filter: {log:?}"),
            ));
        }
        let log_format = match self.get("log_format").unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(err(
                    "COURIERX_LOG_FORMAT",
                    format!("must be pretty or json, got {other:?}"),
                ));
            }
        };
        let defaults = EngineConfig::default();
        let public_url = match self.get("public_url") {
            None => format!("http://{listen}"),
            Some(u) => {
                let u = u.trim().trim_end_matches('/');
                let rest = u
                    .strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"));
                match rest {
                    Some(host) if !host.is_empty() && !u.chars().any(char::is_whitespace) => {
                        u.to_string()
                    }
                    _ => {
                        return Err(err(
                            "COURIERX_PUBLIC_URL",
                            "must be an http:// or https:// URL, e.g. https://mail.example.com",
                        ));
                    }
                }
            }
        };
        let sns_allowed_url_prefixes: Vec<String> = self
            .get("sns_allowed_url_prefixes")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = sns_allowed_url_prefixes
            .iter()
            .find(|p| !(p.starts_with("https://") || p.starts_with("http://")) || !p.ends_with('/'))
        {
            return Err(err(
                "COURIERX_SNS_ALLOWED_URL_PREFIXES",
                format!("{bad:?} must be an http(s) URL prefix ending in '/'"),
            ));
        }
        const DAY_MS: i64 = 86_400_000;
        let retention = RetentionConfig {
            messages_ms: self.num(
                "retention_messages_days",
                defaults.retention.messages_ms / DAY_MS,
                1,
                36_500,
            )? * DAY_MS,
            sandbox_ms: self.num(
                "retention_sandbox_days",
                defaults.retention.sandbox_ms / DAY_MS,
                1,
                36_500,
            )? * DAY_MS,
            provider_events_ms: self.num(
                "retention_provider_events_days",
                defaults.retention.provider_events_ms / DAY_MS,
                1,
                36_500,
            )? * DAY_MS,
            interval: std::time::Duration::from_secs(self.num(
                "housekeeping_interval_seconds",
                defaults.retention.interval.as_secs(),
                1,
                86_400,
            )?),
        };
        let engine = EngineConfig {
            retention,
            public_url,
            max_attempts: self.num("max_attempts", defaults.max_attempts, 1, 100)?,
            backoff_base_ms: self.num(
                "backoff_base_ms",
                defaults.backoff_base_ms,
                1,
                86_400_000,
            )?,
            backoff_max_ms: self.num(
                "backoff_max_ms",
                defaults.backoff_max_ms,
                1,
                7 * 86_400_000,
            )?,
            lease_ms: self.num("lease_ms", defaults.lease_ms, 100, 86_400_000)?,
            worker_concurrency: self.num(
                "worker_concurrency",
                defaults.worker_concurrency,
                1,
                10_000,
            )?,
            idempotency_ttl_ms: defaults.idempotency_ttl_ms,
            shutdown_grace_ms: self.num(
                "shutdown_grace_ms",
                defaults.shutdown_grace_ms,
                0,
                600_000,
            )?,
        };
        if engine.backoff_max_ms < engine.backoff_base_ms {
            return Err(err(
                "COURIERX_BACKOFF_MAX_MS",
                "must not be below COURIERX_BACKOFF_BASE_MS",
            ));
        }
        let run_workers = match self.get("run_workers").unwrap_or("true") {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(err(
                    "COURIERX_RUN_WORKERS",
                    format!("must be true or false, got {other:?}"),
                ));
            }
        };
        Ok(Settings {
            run_workers,
            sns_allowed_url_prefixes,
            listen,
            data_dir,
            database_url,
            secret_key,
            signup,
            log,
            log_format,
            body_limit: self.num("body_limit", 10 * 1024 * 1024, 1024, 1024 * 1024 * 1024)?,
            max_attachment_bytes: self.num(
                "max_attachment_bytes",
                10 * 1024 * 1024,
                1024,
                100 * 1024 * 1024,
            )?,
            pg_max_connections: self.num("pg_max_connections", 20, 2, 1000)?,
            engine,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut r = RawSettings::default();
        for (k, v) in pairs {
            r.set(k, *v);
        }
        r.parse()
    }

    #[test]
    fn defaults_and_errors() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.signup, SignupMode::FirstUser);
        let e = parse(&[("listen", "nope")]).unwrap_err();
        assert_eq!(e.setting, "COURIERX_LISTEN");
        let e = parse(&[("database_url", "postgres://x/y")]).unwrap_err();
        assert_eq!(e.setting, "COURIERX_SECRET_KEY");
        let e = parse(&[("signup", "sometimes")]).unwrap_err();
        assert!(e.to_string().contains("COURIERX_SIGNUP"));
        let e = parse(&[("max_attempts", "0")]).unwrap_err();
        assert_eq!(e.setting, "COURIERX_MAX_ATTEMPTS");
        assert_eq!(s.engine.retention.messages_ms, 30 * 86_400_000);
        assert_eq!(s.engine.retention.sandbox_ms, 7 * 86_400_000);
        assert_eq!(s.engine.retention.interval.as_secs(), 60);
        let s = parse(&[
            ("retention_messages_days", "90"),
            ("housekeeping_interval_seconds", "5"),
        ])
        .unwrap();
        assert_eq!(s.engine.retention.messages_ms, 90 * 86_400_000);
        assert_eq!(s.engine.retention.interval.as_secs(), 5);
        let e = parse(&[("retention_sandbox_days", "0")]).unwrap_err();
        assert_eq!(e.setting, "COURIERX_RETENTION_SANDBOX_DAYS");
    }
}
