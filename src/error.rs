//! User mistakes versus internal failures.
//!
//! A `UserError` is something the user can fix (a bad config key, a missing file, an
//! incompatible checkpoint): the CLI prints its one line and exits with code 2. Anything else
//! is an internal failure: exit code 1 with the anyhow context chain.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Builds an `anyhow::Error` carrying a [`UserError`]: `bail!(user_error!("..."))`-style use.
#[macro_export]
macro_rules! user_error {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::UserError(format!($($arg)*)))
    };
}

/// Returns early with a [`UserError`].
#[macro_export]
macro_rules! user_bail {
    ($($arg:tt)*) => {
        return Err($crate::user_error!($($arg)*))
    };
}

/// True when the error (or any error in its chain) is a user mistake.
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<UserError>())
}

/// Tests: the text of `err`, after checking it is a user error of exactly one line.
#[cfg(test)]
pub(crate) fn one_line_user_error(err: anyhow::Error) -> String {
    assert!(is_user_error(&err), "not a user error: {err:#}");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "not one line: {msg}");
    msg
}

/// Training diverged: a loss, gradient or weight became NaN or infinite. The CLI exits with
/// code 3; the run directory keeps its last finite checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverged(pub String);

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}

/// True when the error (or any error in its chain) is a [`Diverged`].
pub fn is_divergence(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Diverged>())
}
