//! Which restic this is, and whether stowage can use it. stowage relies on what restic 0.17
//! brought (exit codes 10, 11 and 12 instead of messages to match, `--retry-lock`), so the
//! services read `restic version` at start and refuse anything older.

use std::{fmt, str::FromStr};

use tokio_util::sync::CancellationToken;

use crate::{Restic, error::ResticError};

/// A restic release number, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResticVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// The oldest restic stowage runs: the first with exit codes for a missing repository (10),
/// a held lock (11) and a wrong password (12), and with `--retry-lock`.
pub const MINIMUM_VERSION: ResticVersion = ResticVersion {
    major: 0,
    minor: 17,
    patch: 0,
};

impl fmt::Display for ResticVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for ResticVersion {
    type Err = String;

    /// `0.18.0`, `v0.17.3`, `0.18.0-dev`: the leading release number, suffixes ignored; a
    /// missing patch number reads as 0.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.strip_prefix('v').unwrap_or(text);
        let release = text
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .unwrap_or_default();
        let mut numbers = release.split('.');
        let mut next = |required: bool| -> Result<u32, String> {
            match numbers.next() {
                Some(number) => number
                    .parse()
                    .map_err(|_| format!("`{text}` is not a restic version")),
                None if !required => Ok(0),
                None => Err(format!("`{text}` is not a restic version")),
            }
        };
        let version = ResticVersion {
            major: next(true)?,
            minor: next(true)?,
            patch: next(false)?,
        };
        Ok(version)
    }
}

/// The version in what `restic version` printed, e.g.
/// `restic 0.18.0 compiled with go1.24.4 on linux/amd64`.
pub fn parse_version_line(line: &str) -> Result<ResticVersion, ResticError> {
    let unrecognised = || ResticError::UnrecognisedVersion {
        output: line.trim().to_string(),
    };
    let mut words = line.split_whitespace();
    if words.next() != Some("restic") {
        return Err(unrecognised());
    }
    words
        .next()
        .and_then(|word| word.parse().ok())
        .ok_or_else(unrecognised)
}

/// The version `restic version` printed when it is at least [`MINIMUM_VERSION`]; otherwise
/// an error naming the version found and the version needed.
pub fn require_supported(line: &str) -> Result<ResticVersion, ResticError> {
    let found = parse_version_line(line)?;
    if found < MINIMUM_VERSION {
        return Err(ResticError::UnsupportedVersion {
            found: found.to_string(),
            needed: MINIMUM_VERSION.to_string(),
            output: line.trim().to_string(),
        });
    }
    Ok(found)
}

impl Restic {
    /// Runs `restic version` and checks it against [`MINIMUM_VERSION`]; returns the line it
    /// printed (for logs and GetAgentInfo) and the parsed version.
    pub async fn supported_version(
        &self,
        cancel: &CancellationToken,
    ) -> Result<(String, ResticVersion), ResticError> {
        let line = self.version(cancel).await?;
        let version = require_supported(&line).map_err(|error| match error {
            ResticError::UnsupportedVersion {
                found,
                needed,
                output,
            } => ResticError::UnsupportedVersion {
                found,
                needed,
                output: format!("{output}, from {}", self.binary().display()),
            },
            other => other,
        })?;
        Ok((line, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> ResticVersion {
        ResticVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn release_lines_parse() {
        assert_eq!(
            parse_version_line("restic 0.18.0 compiled with go1.24.4 on linux/amd64\n").unwrap(),
            v(0, 18, 0)
        );
        assert_eq!(
            parse_version_line("restic 0.14.0 compiled with go1.19.8 on linux/amd64").unwrap(),
            v(0, 14, 0)
        );
        assert_eq!(
            parse_version_line("restic 0.17.3-dev (compiled manually) compiled with go1.23")
                .unwrap(),
            v(0, 17, 3)
        );
        assert_eq!(parse_version_line("restic v1.2").unwrap(), v(1, 2, 0));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v(0, 9, 6) < v(0, 17, 0));
        assert!(v(0, 17, 0) < v(0, 17, 10));
        assert!(v(1, 0, 0) > v(0, 99, 99));
    }

    #[test]
    fn old_restic_is_refused_naming_found_and_needed() {
        let error =
            require_supported("restic 0.14.0 compiled with go1.19.8 on linux/amd64").unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, ResticError::UnsupportedVersion { found, needed, .. }
                if found == "0.14.0" && needed == "0.17.0"),
            "{error:?}"
        );
        assert!(
            message.contains("0.14.0") && message.contains("0.17.0 or newer"),
            "{message}"
        );
        assert!(require_supported("restic 0.16.5 compiled with go1.22").is_err());
    }

    #[test]
    fn supported_restic_is_accepted() {
        assert_eq!(
            require_supported("restic 0.17.0 compiled with go1.22.5 on linux/amd64").unwrap(),
            v(0, 17, 0)
        );
        assert_eq!(
            require_supported("restic 0.18.0 compiled with go1.24.4 on linux/amd64").unwrap(),
            v(0, 18, 0)
        );
    }

    #[test]
    fn something_else_is_not_a_version() {
        for line in ["", "rustic 0.18.0", "restic", "restic x.y", "restic 0"] {
            let error = parse_version_line(line).unwrap_err();
            assert!(
                matches!(error, ResticError::UnrecognisedVersion { .. }),
                "{line}: {error:?}"
            );
        }
    }
}
