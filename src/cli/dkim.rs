//! `sluice dkim keygen`: makes a DKIM key and says what to publish.
//!
//! The private key is written as PKCS#8 PEM to `DIR/DOMAIN.SELECTOR.pem`
//! (mode 0600, never over an existing file); the TXT record to publish at
//! `SELECTOR._domainkey.DOMAIN` and the `[[dkim]]` entry that uses the key
//! are printed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use crate::auth::dkim::{self, Algorithm};

/// `sluice dkim ...`.
#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Generate a signing key and print the DNS TXT record to publish.
    Keygen {
        /// The From: domain the key signs for.
        #[arg(long)]
        domain: String,
        /// The selector: the key is published at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// ed25519 (RFC 8463), or rsa (2048 bits; every receiver verifies it).
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Ed25519)]
        algorithm: KeyAlgorithm,
        /// Where to write the private key.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

/// `--algorithm`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyAlgorithm {
    Ed25519,
    Rsa,
}

/// Runs a `sluice dkim` command.
pub fn run(command: DkimCommand) -> anyhow::Result<()> {
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            out,
        } => keygen(&domain, &selector, algorithm, &out),
    }
}

fn keygen(domain: &str, selector: &str, algorithm: KeyAlgorithm, out: &Path) -> anyhow::Result<()> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let valid = |name: &str| {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    anyhow::ensure!(valid(&domain), "--domain {domain:?} is not a domain name");
    anyhow::ensure!(
        valid(selector),
        "--selector {selector:?} is not a DNS label"
    );
    let algorithm = match algorithm {
        KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
        KeyAlgorithm::Rsa => Algorithm::Rsa,
    };
    let key = dkim::generate(algorithm)
        .map_err(|error| anyhow::anyhow!("generating the key: {error}"))?;
    let path = out.join(format!("{domain}.{selector}.pem"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(key.pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("# private key ({}): {}", algorithm.name(), path.display());
    println!("# publish this TXT record:");
    println!("{}", dkim::zone_line(selector, &domain, &key.txt));
    println!("# and add to the configuration:");
    println!("[[dkim]]");
    println!("domain = \"{domain}\"");
    println!("selector = \"{selector}\"");
    println!("private_key = \"{}\"", path.display());
    Ok(())
}
