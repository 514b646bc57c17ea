//! `[spool]`: where the queue lives, and the free-space reserve kept on its
//! filesystem.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{MIB, byte_size};

/// `[spool]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The queue's directory.
    pub path: PathBuf,
    /// sled's page cache.
    #[serde(with = "byte_size")]
    pub cache_capacity: u64,
    /// The free space kept on the spool's filesystem: below it, MAIL gets
    /// `452 4.3.1` (DESIGN.md "Disk space").
    #[serde(with = "min_free")]
    pub min_free: MinFree,
}

/// `spool.min_free`: how much free space new mail must leave on the spool's
/// filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinFree {
    /// [`MinFree::AUTO_SHARE_PERCENT`] of the filesystem's size, at most
    /// [`MinFree::AUTO_CAP`]: `"auto"`, the default.
    #[default]
    Auto,
    /// This many bytes; 0 switches the reserve off.
    Bytes(u64),
}

impl MinFree {
    /// The share of the filesystem `"auto"` keeps free, in percent.
    pub const AUTO_SHARE_PERCENT: u64 = 5;
    /// The most `"auto"` keeps free: 2 GiB.
    pub const AUTO_CAP: u64 = 2048 * MIB;

    /// The reserve in bytes on a filesystem of `filesystem_size` bytes.
    pub fn bytes(self, filesystem_size: u64) -> u64 {
        match self {
            MinFree::Auto => (filesystem_size / 100 * Self::AUTO_SHARE_PERCENT).min(Self::AUTO_CAP),
            MinFree::Bytes(bytes) => bytes,
        }
    }
}

/// Serde for `min_free`: `"auto"`, or a size like `"2GiB"` (0 is off).
mod min_free {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::MinFree;

    const AUTO: &str = "auto";

    pub fn serialize<S: Serializer>(value: &MinFree, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            MinFree::Auto => serializer.serialize_str(AUTO),
            MinFree::Bytes(bytes) => {
                serializer.serialize_str(&super::super::units::format_byte_size(*bytes))
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<MinFree, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        let expected = "expected \"auto\" or a size like \"2GiB\" (0 switches the reserve off)";
        match Raw::deserialize(deserializer).map_err(|_| D::Error::custom(expected))? {
            Raw::Number(bytes) => Ok(MinFree::Bytes(bytes)),
            Raw::Text(text) if text.trim().eq_ignore_ascii_case(AUTO) => Ok(MinFree::Auto),
            Raw::Text(text) => super::super::units::parse_byte_size(&text)
                .map(MinFree::Bytes)
                .map_err(|error| D::Error::custom(format!("{error}; {expected}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_five_percent_capped_at_2_gib() {
        assert_eq!(MinFree::Auto.bytes(100 * MIB), 5 * MIB);
        assert_eq!(MinFree::Auto.bytes(1024 * 1024 * MIB), 2048 * MIB);
        assert_eq!(MinFree::Bytes(7).bytes(100 * MIB), 7);
    }

    #[test]
    fn min_free_reads_auto_sizes_and_numbers_and_prints_back() {
        let parse = |text: &str| {
            crate::config::Config::parse(
                &format!("[spool]\nmin_free = {text}\n"),
                "t.toml".as_ref(),
            )
        };
        assert_eq!(parse("\"auto\"").unwrap().spool.min_free, MinFree::Auto);
        assert_eq!(
            parse("\"3GiB\"").unwrap().spool.min_free,
            MinFree::Bytes(3 * 1024 * MIB)
        );
        assert_eq!(parse("0").unwrap().spool.min_free, MinFree::Bytes(0));
        let error = parse("\"lots\"").unwrap_err().to_string();
        assert!(error.contains("min_free"), "{error}");
        let printed = parse("\"3GiB\"").unwrap().to_toml();
        assert!(printed.contains("min_free = \"3GiB\""), "{printed}");
        let printed = crate::config::Config::default().to_toml();
        assert!(printed.contains("min_free = \"auto\""), "{printed}");
    }
}
