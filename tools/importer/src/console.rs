//! Progress bars and messages on stderr.
//!
//! Messages go through the bars' [`MultiProgress`], which clears the bars while a message is
//! written, so the two never garble each other.

use std::fmt::Display;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The importer's stderr: progress bars and one line per message.
#[derive(Clone)]
pub struct Console {
    multi: MultiProgress,
}

impl Console {
    /// Returns a console whose bars are drawn only when `show_progress` is set and stderr is
    /// a terminal. Messages are written in every case.
    pub fn new(show_progress: bool) -> Self {
        let target = if show_progress {
            // indicatif draws nothing on a stderr that is not a terminal.
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// Writes one line to stderr.
    pub fn message(&self, line: impl Display) {
        self.multi.suspend(|| eprintln!("{line}"));
    }

    /// Adds a bar that counts bytes up to `total`.
    pub fn bytes_bar(&self, prefix: &'static str, total: u64) -> ProgressBar {
        self.add_bar(
            prefix,
            total,
            "{prefix:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    /// Adds a bar that counts items, named by `unit`, up to `total`.
    pub fn count_bar(&self, prefix: &'static str, total: u64, unit: &str) -> ProgressBar {
        let template = format!(
            "{{prefix:>9}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}}"
        );
        self.add_bar(prefix, total, &template)
    }

    fn add_bar(&self, prefix: &'static str, total: u64, template: &str) -> ProgressBar {
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(style);
        bar.set_prefix(prefix);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}
