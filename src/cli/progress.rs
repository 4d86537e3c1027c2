//! Progress bars on stderr, only when stderr is a terminal and not --quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar that draws only on an interactive stderr.
pub fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    bar_of(len, msg, "ops", quiet)
}

/// A bar counting `unit`s, drawn only on an interactive stderr.
pub fn bar_of(len: u64, msg: &str, unit: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    if !quiet && std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        let template = format!("{{msg:>12}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{elapsed}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        pb.set_style(style);
        pb.set_message(msg.to_string());
    }
    pb
}
