//! `sluice generate`: the man pages and shell completions the package
//! installs, written from the command-line definition itself so that they
//! cannot drift from `--help`.
//!
//! Pages: `sluice(8)`, one page per command and sub-command
//! (`sluice-queue-list(8)`, as git and systemd name theirs), and
//! `sluice.toml(5)`, whose body is the fully commented example
//! configuration (`conf/sluice.toml`).

use std::fs;
use std::io;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// The fully commented example configuration, the body of `sluice.toml(5)`.
const EXAMPLE_CONFIG: &str = include_str!("../../conf/sluice.toml");

/// Writes `sluice.8`, a page per (sub-)command and `sluice.toml.5` into
/// `dir` (created when missing); returns the file names written.
pub fn man_pages(command: &Command, dir: &Path) -> io::Result<Vec<String>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut command = command.clone().disable_help_subcommand(true);
    command.build();
    write_pages(&command, "", dir, &mut written)?;
    let name = "sluice.toml.5";
    fs::write(dir.join(name), config_page(EXAMPLE_CONFIG))?;
    written.push(name.to_string());
    Ok(written)
}

/// One page for `command` (named after its path from the top) and one for
/// each visible sub-command below it.
fn write_pages(
    command: &Command,
    parent: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> io::Result<()> {
    let name = if parent.is_empty() {
        command.get_name().to_string()
    } else {
        format!("{parent}-{}", command.get_name())
    };
    // clap_mangen titles the page with the command's own name; a sub-command
    // page gets the full path ("sluice-queue-list"), as git's pages do.
    let page = command
        .clone()
        .name(name.clone())
        .display_name(name.replace('-', " "));
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .section("8")
        .manual("sluice")
        .source(format!("sluice {}", env!("CARGO_PKG_VERSION")))
        .render(&mut text)?;
    let file = format!("{name}.8");
    fs::write(dir.join(&file), text)?;
    written.push(file);
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, &name, dir, written)?;
    }
    Ok(())
}

/// `sluice.toml(5)`: a short introduction, then the example configuration
/// verbatim (its comments are the reference for every key).
fn config_page(example: &str) -> String {
    let mut page = String::new();
    page.push_str(&format!(
        ".TH SLUICE.TOML 5 \"\" \"sluice {}\" \"sluice\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    page.push_str(
        ".SH NAME\nsluice.toml \\- configuration file of the sluice mail transfer agent\n",
    );
    page.push_str(".SH SYNOPSIS\n/etc/sluice/sluice.toml\n");
    page.push_str(
        ".SH DESCRIPTION\n\
         sluice reads one TOML file, given by \\fB\\-\\-config\\fR or \\fBSLUICE_CONFIG\\fR, \
         else /etc/sluice/sluice.toml when it exists, else embedded defaults. \
         Durations are strings such as \"30s\", \"5m\" or \"5d\"; sizes such as \"35MiB\". \
         Unknown keys are errors. \\fBsluice check\\-config\\fR validates a file and prints \
         every effective setting; \\fBSIGHUP\\fR reloads it.\n\
         .PP\n\
         What follows is the fully commented example configuration; every key is \
         described in the comment beside it.\n",
    );
    page.push_str(".SH EXAMPLE\n.nf\n");
    for line in example.lines() {
        page.push_str(&roff_line(line));
        page.push('\n');
    }
    page.push_str(".fi\n.SH SEE ALSO\n\\fBsluice\\fR(8), \\fBsluice\\-serve\\fR(8), \\fBsluice\\-check\\-config\\fR(8)\n");
    page
}

/// A line of literal text inside `.nf`: backslashes escaped, and a leading
/// dot or quote guarded so that roff does not read it as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Writes completion scripts for bash, zsh and fish into `dir`, under the
/// names their packaged locations expect (`sluice`, `_sluice`,
/// `sluice.fish`); returns the file names written.
pub fn completions(command: &Command, dir: &Path) -> io::Result<Vec<String>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, "sluice"),
        (Shell::Zsh, "_sluice"),
        (Shell::Fish, "sluice.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "sluice", &mut text);
        fs::write(dir.join(file), text)?;
        written.push(file.to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command::new("sluice")
            .about("test")
            .subcommand(
                Command::new("queue")
                    .about("the queue")
                    .subcommand(Command::new("list").about("list it")),
            )
            .subcommand(Command::new("generate").hide(true))
    }

    #[test]
    fn a_page_per_visible_command_and_the_config_page() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut written = man_pages(&command(), dir.path()).expect("pages written");
        written.sort();
        assert_eq!(
            written,
            [
                "sluice-queue-list.8",
                "sluice-queue.8",
                "sluice.8",
                "sluice.toml.5"
            ]
        );
        let list = fs::read_to_string(dir.path().join("sluice-queue-list.8")).unwrap();
        assert!(list.contains(".TH \"sluice queue list\" 8"), "{list}");
    }

    #[test]
    fn the_config_page_guards_leading_dots_and_backslashes() {
        let page = config_page(".dot\npath = \"C:\\x\"\n");
        assert!(page.contains("\n\\&.dot\n"), "{page}");
        assert!(page.contains("C:\\ex"), "{page}");
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let written = completions(&command(), dir.path()).expect("completions written");
        assert_eq!(written, ["sluice", "_sluice", "sluice.fish"]);
        let bash = fs::read_to_string(dir.path().join("sluice")).unwrap();
        assert!(bash.contains("queue"), "{bash}");
    }
}
