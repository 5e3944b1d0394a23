//! Standard output for every command: [`outln!`] and [`out!`] instead of
//! `println!` and `print!`.
//!
//! `println!` panics when stdout is a closed pipe (`natkit netcheck --json
//! | head -c1`; Rust ignores SIGPIPE, so the write fails with EPIPE). Here a
//! closed pipe is remembered and later output dropped: the command still
//! finishes its work (a TURN check still deletes its allocations) and
//! `main` then exits quietly. Any other write error (a full disk behind
//! `> file`) is remembered too and reported as the command's error.

use std::io::{self, Write};
use std::sync::Mutex;

/// What went wrong writing to stdout, if anything.
static FAILED: Mutex<Option<io::ErrorKind>> = Mutex::new(None);

/// Write `args` to stdout; see the module docs for errors.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    if failed.is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        *failed = Some(e.kind());
    }
}

/// How stdout ended: `Ok(true)` when the reader went away (closed pipe),
/// `Ok(false)` when every write went through, `Err` for other failures.
pub fn status() -> io::Result<bool> {
    let failed = *FAILED.lock().unwrap_or_else(|p| p.into_inner());
    match failed {
        None => Ok(false),
        Some(io::ErrorKind::BrokenPipe) => Ok(true),
        Some(k) => Err(io::Error::new(k, "cannot write to standard output")),
    }
}

/// A line for the end of stderr, after `main`'s own error line.
static LAST_ERR_LINE: Mutex<Option<String>> = Mutex::new(None);

/// Write `line` as the last line of stderr ([`write_last_err_line`], in
/// `main`, after the error line): where stdout carries a peer's data, the
/// `--json` document goes there, and scripts take the last line.
pub fn last_err_line(line: String) {
    *LAST_ERR_LINE.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
}

/// Write what [`last_err_line`] kept, if anything.
pub fn write_last_err_line() {
    let line = LAST_ERR_LINE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(l) = line {
        // As `errln!`: a closed stderr drops it.
        let _ = writeln!(io::stderr(), "{l}");
    }
}

/// The document `--json` prints when a command fails, for commands that
/// have no report of their own: `{"ok": false, "error": {"kind", "message"}}`
/// (the shape of every natkit failure document).
pub fn failure_json(kind: &str, message: &str) {
    let doc = serde_json::json!({
        "ok": false,
        "error": { "kind": kind, "message": message },
    });
    write(format_args!("{doc:#}\n"));
}

/// The stable kind of a command's error: a [`crate::turn::Failure`]'s
/// own, `io` for system errors, else `error`.
pub fn kind_of(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<crate::turn::Failure>() {
            return f.kind;
        }
        if cause.downcast_ref::<io::Error>().is_some() {
            return "io";
        }
    }
    "error"
}

/// Whether `message`, a panic's, is std's `println!` or `eprintln!`
/// failing on a closed pipe (`natkit ... 2>&1 | head -1`).
pub fn is_closed_pipe_panic(message: &str) -> bool {
    (message.starts_with("failed printing to stdout")
        || message.starts_with("failed printing to stderr"))
        && message.contains("Broken pipe")
}

/// `println!` that never panics: see the module docs.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that never panics: a closed stderr (`natkit ... 2>&1 | head
/// -1`) drops the line; there is no one left to tell.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics, as [`errln!`].
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// `print!` that never panics: see the module docs.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}
