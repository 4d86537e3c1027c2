//! The `sdcompress` binary: parse, run, map the outcome to an exit code.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let parsed = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage
            // errors exit 2.
            let code = if e.use_stderr() {
                cli::EXIT_ERROR
            } else {
                cli::EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::run(parsed) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A closed stdout (`sdcompress info m | head`) is not an error.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::from(cli::EXIT_OK);
            }
            // One line per error: names from the input (manifest ids, op
            // names) may contain newlines, so control characters in the
            // message are escaped; a trailing `hint:` line is ours.
            let text = format!("{e:#}");
            let (msg, hint) = match text.split_once("\nhint: ") {
                Some((m, h)) => (m.to_string(), Some(h.to_string())),
                None => (text, None),
            };
            eprintln!("error: {}", escape_controls(&msg));
            if let Some(h) = hint {
                eprintln!("hint: {}", escape_controls(&h));
            }
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}

/// Escapes newlines and other control characters so a message stays on
/// one line.
fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
