//! berth's errors, one type for the whole crate, each variant mapped to an
//! exit code of SPEC §3. Messages are one lowercase line that names the
//! offending value and ends with what to do.

use std::fmt;

/// Exit codes of SPEC §3.
pub mod exit {
    pub const MALFORMED: i32 = 64;
    pub const UNAVAILABLE: i32 = 69;
    pub const INTERNAL: i32 = 70;
    pub const DENIED: i32 = 77;
    pub const CONFIG: i32 = 78;
}

/// A refusal by policy: which rule, which value, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Denial {
    pub rule: &'static str,
    pub value: String,
    pub message: String,
    pub hint: String,
}

impl Denial {
    pub fn new(
        rule: &'static str,
        value: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Denial {
            rule,
            value: value.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Refuse with a denial: the rule, the value, what is wrong, what to do.
pub fn deny<T>(
    rule: &'static str,
    value: impl Into<String>,
    msg: impl Into<String>,
    hint: impl Into<String>,
) -> Result<T> {
    Err(Error::Denied(Denial::new(rule, value, msg, hint)))
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "; {}", self.hint)?;
        }
        write!(f, " [rule {}]", self.rule)
    }
}

#[derive(Debug)]
pub enum Error {
    /// The request does not parse (64).
    Malformed(String),
    /// The request is refused by policy (77).
    Denied(Denial),
    /// Docker, the broker or another service is not reachable (69).
    Unavailable(String),
    /// The policy or the installation is invalid or unsafe (78).
    Config(String),
    /// A bug or an unexpected system failure (70).
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Malformed(_) => exit::MALFORMED,
            Error::Denied(_) => exit::DENIED,
            Error::Unavailable(_) => exit::UNAVAILABLE,
            Error::Config(_) => exit::CONFIG,
            Error::Internal(_) => exit::INTERNAL,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "malformed",
            Error::Denied(_) => "denied",
            Error::Unavailable(_) => "unavailable",
            Error::Config(_) => "config",
            Error::Internal(_) => "internal",
        }
    }

    pub fn internal(context: &str, err: impl fmt::Display) -> Self {
        Error::Internal(format!("{context}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(m) => write!(f, "malformed request: {m}"),
            Error::Denied(d) => write!(f, "denied: {d}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Config(m) => write!(f, "invalid installation: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Denial> for Error {
    fn from(d: Denial) -> Self {
        Error::Denied(d)
    }
}
