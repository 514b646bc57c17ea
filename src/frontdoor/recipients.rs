//! `[recipients] files`: the addresses that exist in `accept_domains`, one
//! address or `@domain` (every address of the domain) a line, `#` starting
//! a comment. Compared without regard to case. Loaded at start and at each
//! reload, with the same errors `check-config` gives.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Why a recipients file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {entry:?} is not an address or @domain")]
    Entry {
        path: PathBuf,
        line: usize,
        entry: String,
    },
}

/// The known recipients of every file, together.
#[derive(Debug, Default, Clone)]
pub struct RecipientList {
    /// Lowercased `local@domain`.
    addresses: HashSet<String>,
    /// Lowercased domains given as `@domain`.
    domains: HashSet<String>,
    /// At least one file was configured (an empty one included).
    configured: bool,
}

impl RecipientList {
    /// Reads every file; the first that cannot be used is the error.
    pub fn load(files: &[PathBuf]) -> Result<RecipientList, ListError> {
        let mut list = RecipientList {
            configured: !files.is_empty(),
            ..RecipientList::default()
        };
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
                path: path.clone(),
                source,
            })?;
            list.add(&text, path)?;
        }
        Ok(list)
    }

    /// Adds the entries of one file's `text`.
    fn add(&mut self, text: &str, path: &Path) -> Result<(), ListError> {
        for (number, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let bad = || ListError::Entry {
                path: path.to_path_buf(),
                line: number + 1,
                entry: entry.to_string(),
            };
            if entry.contains(char::is_whitespace) {
                return Err(bad());
            }
            let entry = entry.to_lowercase();
            match entry.rsplit_once('@') {
                Some(("", domain)) if !domain.is_empty() => {
                    self.domains
                        .insert(domain.trim_end_matches('.').to_string());
                }
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                    self.addresses.insert(entry);
                }
                _ => return Err(bad()),
            }
        }
        Ok(())
    }

    /// True when files were configured: an address not in them is unknown
    /// (unless a call-ahead says otherwise).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// True when `address` (local@domain) is listed, or its domain is.
    pub fn contains(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        if self.addresses.contains(&address) {
            return true;
        }
        address
            .rsplit_once('@')
            .is_some_and(|(_, domain)| self.domains.contains(domain.trim_end_matches('.')))
    }

    /// How many entries the files hold (for the log).
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    /// True when the files hold no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> RecipientList {
        let mut list = RecipientList {
            configured: true,
            ..RecipientList::default()
        };
        list.add(text, Path::new("r.txt")).expect("valid list");
        list
    }

    #[test]
    fn addresses_and_domains_case_insensitively() {
        let list = list("# users\nAlice@Example.org\n\n@whole.example  # catch-all\n");
        assert!(list.contains("alice@example.org"));
        assert!(list.contains("ALICE@EXAMPLE.ORG"));
        assert!(!list.contains("bob@example.org"));
        assert!(list.contains("anyone@whole.example"));
        assert!(list.contains("anyone@Whole.Example."));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn a_bad_entry_names_its_line() {
        let mut list = RecipientList::default();
        for bad in ["alice", "@", "alice@", "a b@example.org"] {
            let error = list
                .add(&format!("ok@example.org\n{bad}\n"), Path::new("r.txt"))
                .expect_err(bad);
            assert!(error.to_string().contains("r.txt line 2"), "{error}");
        }
    }
}
