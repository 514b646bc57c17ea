//! Sizes and durations as the configuration writes them ("35MiB", "30s",
//! "5d"): parsing, formatting that reads back to the same value, and the
//! serde adapters the file tree uses.

use std::time::Duration;

/// One mebibyte.
pub(super) const MIB: u64 = 1024 * 1024;

/// Parses "35MiB", "10MB", "512KiB", "1G", "1048576".
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. \"35MiB\""))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => MIB,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * MIB,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Formats a byte count the way [`parse_byte_size`] reads it back.
pub fn format_byte_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", 1024)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Formats a duration the way the configuration writes them: one number in
/// the largest unit that is exact ("5d", "1h", "90m", "90s", "250ms"), which
/// the parser reads back to the same value.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, size) = UNITS
        .into_iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .expect("every count of nanoseconds is a multiple of 1");
    format!("{}{unit}", nanos / size)
}

/// Serde for sizes: a string like "35MiB", or a plain integer of bytes.
pub(super) mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_byte_size(*bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| D::Error::custom("expected a size like \"35MiB\""))?
        {
            Raw::Number(bytes) => Ok(bytes),
            Raw::Text(text) => super::parse_byte_size(&text).map_err(D::Error::custom),
        }
    }
}

/// Serde for durations: strings like "30s", "5m", "5d", "1h 30m".
pub(super) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)
            .map_err(|_| D::Error::custom("expected a duration string like \"30s\" or \"5m\""))?;
        humantime::parse_duration(&text)
            .map_err(|error| D::Error::custom(format!("invalid duration {text:?}: {error}")))
    }
}

/// Serde for a duration that may be switched off: `"off"` is `None`.
pub(super) mod duration_or_off {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// The word that disables it.
    const OFF: &str = "off";

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&super::format_duration(*duration)),
            None => serializer.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)
            .map_err(|_| D::Error::custom("expected a duration string like \"4h\", or \"off\""))?;
        if text.trim().eq_ignore_ascii_case(OFF) {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|error| {
            D::Error::custom(format!("invalid duration {text:?}: {error} (or \"off\")"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_byte_size("35MiB"), Ok(35 * MIB));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("512"), Ok(512));
        assert!(parse_byte_size("12 furlongs").is_err());
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit_and_read_back() {
        for (seconds, text) in [
            (5 * 86400, "5d"),
            (3600, "1h"),
            (5400, "90m"),
            (90, "90s"),
            (300, "5m"),
            (0, "0s"),
        ] {
            let duration = Duration::from_secs(seconds);
            assert_eq!(format_duration(duration), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), duration);
        }
        let odd = Duration::from_millis(1500);
        assert_eq!(format_duration(odd), "1500ms");
        assert_eq!(humantime::parse_duration("1500ms").unwrap(), odd);
        let odd = Duration::new(1, 1);
        assert_eq!(
            humantime::parse_duration(&format_duration(odd)).unwrap(),
            odd
        );
    }
}
