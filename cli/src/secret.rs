//! Secrets (`--password`, `--secret`, `--turn-password`, `--turn-secret`)
//! never need to be on the command line, where `ps` and shell history see
//! them: each also comes from an environment variable (clap's `env`, named
//! in its help: `NATKIT_TURN_PASSWORD`, `NATKIT_TURN_SECRET`) or from a file given with the matching `--...-file` flag.

use std::path::Path;

use anyhow::{bail, Context};

/// The secret from its flag (or environment variable) or from `file`
/// (its first line; clap keeps the two apart), `None` when neither.
pub fn resolve(
    value: Option<&str>,
    file: Option<&Path>,
    file_flag: &str,
) -> anyhow::Result<Option<String>> {
    let Some(path) = file else {
        return Ok(value.map(str::to_owned));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{file_flag} {}: cannot read it", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        bail!("{file_flag} {}: the first line is empty", path.display());
    }
    Ok(Some(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_first_line_or_the_value() {
        let dir = std::env::temp_dir().join(format!("natkit-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "hunter2\r\nignored\n").unwrap();
        assert_eq!(
            resolve(None, Some(&f), "--secret-file").unwrap().as_deref(),
            Some("hunter2")
        );
        assert_eq!(
            resolve(Some("v"), None, "--x").unwrap().as_deref(),
            Some("v")
        );
        assert_eq!(resolve(None, None, "--x").unwrap(), None);
        std::fs::write(&f, "\n").unwrap();
        let e = resolve(None, Some(&f), "--secret-file").unwrap_err();
        assert!(e.to_string().contains("first line is empty"), "{e}");
        let e = resolve(None, Some(&dir.join("missing")), "--secret-file").unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
