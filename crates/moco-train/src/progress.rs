//! Progress output of the training loop: one self-updating status line with a bar on a
//! terminal, plain lines otherwise.

use std::io::Write;

/// `1h05m`, `3m07s`.
pub fn format_eta(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Progress output: one self-updating status line with a bar on a terminal, plain lines
/// otherwise.
pub struct Progress {
    quiet: bool,
    /// Standard output is a terminal.
    pub tty: bool,
    open: bool,
}

impl Progress {
    /// Lines on standard output unless `quiet`.
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        Progress {
            quiet,
            tty: std::io::stdout().is_terminal(),
            open: false,
        }
    }

    /// Whether nothing is printed.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// A permanent line (ends the status line first).
    pub fn line(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        if self.open {
            println!();
            self.open = false;
        }
        println!("{text}");
    }

    /// Ends the status line, if one is showing.
    pub fn finish(&mut self) {
        if self.open {
            println!();
            self.open = false;
        }
    }

    /// The status line: redrawn in place on a terminal, printed when `log` otherwise.
    pub fn status(&mut self, done: u64, total: u64, text: &str, log: bool) {
        if self.quiet {
            return;
        }
        if self.tty {
            let width = 24;
            let filled = (width as u64 * done / total.max(1)) as usize;
            print!(
                "\r\x1b[K[{}{}] {text}",
                "#".repeat(filled),
                ".".repeat(width - filled)
            );
            let _ = std::io::stdout().flush();
            self.open = true;
        } else if log {
            println!("{text}");
        }
    }
}
