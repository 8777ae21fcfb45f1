//! Which of the service's environment variables a restic child inherits: an allow-list, never
//! the whole environment. The services hold secrets in theirs (`STOWAGE_MASTER_KEY`, TLS key
//! paths, …) that restic has no use for, and anything in a child's environment can be read by
//! whoever reads `/proc/<pid>/environ` or a core dump.

use std::ffi::{OsStr, OsString};

/// Names passed on as they are: the process basics and Go runtime tuning.
const EXACT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "TMPDIR",
    "TZ",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    // Go runtime tuning: memory limit, GC target, CPUs, runtime switches.
    "GOMEMLIMIT",
    "GOGC",
    "GOMAXPROCS",
    "GODEBUG",
    // Proxies, in both spellings Go's net/http reads.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    // Where Go finds CA certificates for https object stores.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Prefixes of the variables restic's storage backends read (S3, GCS, Azure, B2, Swift,
/// rclone) and restic's own settings.
const PREFIXES: &[&str] = &[
    "RESTIC_", "AWS_", "GOOGLE_", "AZURE_", "B2_", "OS_", "ST_", "RCLONE_",
];

/// restic settings that would open another repository or read another password than the one
/// the runner hands over: never inherited, only set by the runner itself.
const REPOSITORY_SETTINGS: &[&str] = &[
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_KEY_HINT",
    "RESTIC_FROM_PASSWORD",
    "RESTIC_FROM_PASSWORD_COMMAND",
    "RESTIC_FROM_PASSWORD_FILE",
    "RESTIC_FROM_REPOSITORY",
    "RESTIC_FROM_REPOSITORY_FILE",
    "RESTIC_FROM_KEY_HINT",
];

/// Whether a restic child may inherit variable `name` from the service's environment.
pub fn inherited_by_restic(name: &str) -> bool {
    if name.starts_with("STOWAGE_") || REPOSITORY_SETTINGS.contains(&name) {
        return false;
    }
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The part of `environment` (a process's variables) a restic child inherits. Names that are
/// not valid UTF-8 are no name restic reads, and are left out.
pub fn restic_environment(
    environment: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    environment
        .into_iter()
        .filter(|(name, _)| name.to_str().is_some_and(inherited_by_restic))
        .collect()
}

/// Whether `name` may be set for restic by a caller (a repository's backend credentials, a
/// runner setting): any allow-listed name, and never a stowage setting.
pub fn settable_for_restic(name: &OsStr) -> bool {
    name.to_str().is_some_and(|name| {
        !name.is_empty() && !name.starts_with("STOWAGE_") && !name.contains('=')
    })
}

/// A memory size for restic's `GOMEMLIMIT`, in bytes: a number of bytes (what the Kubernetes
/// downward API gives for a container's memory limit), or a number with one of Go's suffixes
/// (`B`, `KiB`, `MiB`, `GiB`, `TiB`) or Kubernetes' (`Ki`, `Mi`, `Gi`, `Ti`).
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let invalid = || {
        format!(
            "`{text}` is not a memory size: give bytes, or a whole number with B, KiB, MiB, GiB \
             or TiB (e.g. 512MiB)"
        )
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" | "Ki" => 10,
        "MiB" | "Mi" => 20,
        "GiB" | "Gi" => 30,
        "TiB" | "Ti" => 40,
        _ => return Err(invalid()),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large a memory size"))?;
    if bytes == 0 {
        return Err(format!(
            "`{text}`: a memory limit of 0 leaves restic no memory"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_in_go_and_kubernetes_units() {
        assert_eq!(parse_memory_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_memory_size("64KiB"), Ok(64 << 10));
        for bad in [
            "",
            "MiB",
            "512 MB",
            "512M",
            "1.5GiB",
            "-1",
            "0",
            "99999999999TiB",
        ] {
            let error = parse_memory_size(bad).unwrap_err();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    fn names(environment: Vec<(OsString, OsString)>) -> Vec<String> {
        environment
            .into_iter()
            .map(|(name, _)| name.into_string().unwrap())
            .collect()
    }

    #[test]
    fn stowage_secrets_never_reach_restic() {
        let service = env(&[
            ("STOWAGE_MASTER_KEY", "k"),
            ("STOWAGE_MASTER_KEY_FILE", "/secrets/k"),
            ("STOWAGE_TLS_KEY", "/tls/key"),
            ("STOWAGE_RESTIC_BINARY", "restic"),
            ("DATABASE_PASSWORD", "p"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer x"),
            ("PATH", "/usr/bin"),
        ]);
        assert_eq!(names(restic_environment(service)), ["PATH"]);
    }

    #[test]
    fn what_restic_and_its_backends_read_is_kept() {
        let wanted = [
            "PATH",
            "HOME",
            "TMPDIR",
            "GOMEMLIMIT",
            "GOGC",
            "RESTIC_CACHE_DIR",
            "RESTIC_COMPRESSION",
            "RESTIC_PACK_SIZE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_PROJECT_ID",
            "AZURE_ACCOUNT_NAME",
            "AZURE_ACCOUNT_KEY",
            "HTTPS_PROXY",
            "no_proxy",
            "SSL_CERT_FILE",
        ];
        let service: Vec<_> = wanted.iter().map(|name| (*name, "v")).collect();
        assert_eq!(names(restic_environment(env(&service))), wanted);
    }

    #[test]
    fn another_repository_or_password_is_never_inherited() {
        let service = env(&[
            ("RESTIC_PASSWORD", "other"),
            ("RESTIC_PASSWORD_COMMAND", "cat /x"),
            ("RESTIC_REPOSITORY", "/elsewhere"),
            ("RESTIC_FROM_PASSWORD_FILE", "/x"),
            ("RESTIC_HOST", "node"),
        ]);
        assert_eq!(names(restic_environment(service)), ["RESTIC_HOST"]);
    }

    #[test]
    fn lookalike_names_are_not_prefix_matches() {
        for name in ["PATHS", "XAWS_KEY", "MY_RESTIC_X", "path", "GOMEMLIMIT_X"] {
            assert!(!inherited_by_restic(name), "{name}");
        }
    }

    #[test]
    fn callers_cannot_set_stowage_settings() {
        assert!(settable_for_restic(OsStr::new("AWS_ACCESS_KEY_ID")));
        assert!(settable_for_restic(OsStr::new("GOMEMLIMIT")));
        assert!(!settable_for_restic(OsStr::new("STOWAGE_MASTER_KEY")));
        assert!(!settable_for_restic(OsStr::new("")));
        assert!(!settable_for_restic(OsStr::new("A=B")));
    }
}
