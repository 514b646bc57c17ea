//! Log setup: `tracing` to stderr, text or JSON, filtered by `[log] level`.
//!
//! `[log] level` is for sluice's own targets (`sluice`, `sluice_queue`):
//! dependencies (sled, hickory, hyper, rustls, mail-auth, …) log at `warn`
//! at most, so `level = "debug"` shows what sluice does, not their
//! internals. A `target=level` directive in `[log] level` applies as
//! written (`level = "debug,hickory_proto=debug"`), and `RUST_LOG`, when
//! set, replaces the whole filter. A reload changes the level
//! ([`set_level`]); the format stays until a restart.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The crates whose events `[log] level` is about.
const OWN_TARGETS: [&str; 2] = ["sluice", "sluice_queue"];

/// Changes the filter of the installed subscriber.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Set by [`init`] when `[log] level` decides the filter (no `RUST_LOG`).
static RELOAD: OnceLock<SetFilter> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` overrides `[log] level`.
pub fn init(log: &LogConfig) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let reloadable = from_env.is_none();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(directives(&log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and journald get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    // A second init (tests) is harmless: the first subscriber stays.
    let (installed, set_filter): (_, SetFilter) = match log.format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let set = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            (builder.try_init(), set)
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            let set = Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()));
            (builder.try_init(), set)
        }
    };
    if installed.is_ok() && reloadable {
        let _ = RELOAD.set(set_filter);
    }
}

/// Puts `[log] level` in force for the events that come next (a reload).
/// Does nothing when `RUST_LOG` set the filter, which then stays.
pub fn set_level(level: &str) {
    if let Some(set) = RELOAD.get()
        && let Err(error) = set(EnvFilter::new(directives(level)))
    {
        tracing::warn!(%error, "cannot change the log level");
    }
}

/// The `EnvFilter` directives for `[log] level`: each bare level applies to
/// sluice's own targets, everything else to `warn` (or `error`/`off` when
/// the level is that quiet); `target=level` directives are kept as written,
/// after them, so they win.
fn directives(level: &str) -> String {
    let mut dependencies = "warn";
    let mut own = Vec::new();
    let mut explicit = Vec::new();
    for part in level
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        if part.contains('=') || part.contains('[') {
            explicit.push(part.to_string());
            continue;
        }
        let quiet = part.to_ascii_lowercase();
        if quiet == "error" || quiet == "off" {
            dependencies = if quiet == "off" { "off" } else { "error" };
        }
        own.extend(
            OWN_TARGETS
                .iter()
                .map(|target| (*target, format!("{target}={part}"))),
        );
    }
    // A target named in a directive takes that directive, not the bare level.
    let named = |target: &str| {
        explicit
            .iter()
            .any(|directive| directive.split(['=', '[']).next().map(str::trim) == Some(target))
    };
    let own = own
        .into_iter()
        .filter(|(target, _)| !named(target))
        .map(|(_, directive)| directive);
    let mut all = vec![dependencies.to_string()];
    all.extend(own);
    all.extend(explicit);
    all.join(",")
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn a_bare_level_is_for_sluice_and_dependencies_stay_at_warn() {
        assert_eq!(directives("debug"), "warn,sluice=debug,sluice_queue=debug");
        assert_eq!(directives("info"), "warn,sluice=info,sluice_queue=info");
    }

    #[test]
    fn a_quieter_level_quiets_dependencies_too() {
        assert_eq!(directives("error"), "error,sluice=error,sluice_queue=error");
        assert_eq!(directives("off"), "off,sluice=off,sluice_queue=off");
    }

    #[test]
    fn target_directives_are_kept_and_come_last() {
        assert_eq!(
            directives("debug, hickory_proto=trace"),
            "warn,sluice=debug,sluice_queue=debug,hickory_proto=trace"
        );
        assert_eq!(directives("sled=info"), "warn,sled=info");
        assert_eq!(
            directives("sluice=debug,info"),
            "warn,sluice_queue=info,sluice=debug"
        );
    }

    #[test]
    fn every_result_is_a_valid_filter() {
        for level in [
            "trace",
            "debug",
            "info",
            "warn",
            "error",
            "off",
            "info,sled=debug",
        ] {
            tracing_subscriber::EnvFilter::try_new(directives(level))
                .unwrap_or_else(|error| panic!("{level}: {error}"));
        }
    }
}
