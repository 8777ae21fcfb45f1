//! The CLI's config file: named contexts (a server address and the files of its credentials),
//! one of them current, as kubectl keeps clusters, so a user types the server once. The file is
//! YAML at `$XDG_CONFIG_HOME/stowage/config` (else `~/.config/stowage/config`), or where
//! `--config`/`STOWAGE_CONFIG` says. It names credential files and never holds a secret itself,
//! yet it is written as one: a new file created with mode 0600 in a 0700 directory, renamed over
//! the old one, so no reader sees half a file and no other user reads it even for a moment.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no config directory: neither XDG_CONFIG_HOME nor HOME is set; give --config or STOWAGE_CONFIG"
    )]
    NoConfigDir,
    #[error("reading the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {} is not a stowage config: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("writing the config file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no context \"{name}\" in {} (contexts: {known})", path.display())]
    UnknownContext {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error("no current context is set in {}; run `stowage config use-context NAME`", path.display())]
    NoCurrentContext { path: PathBuf },
    #[error(
        "`{0}` is not a context name: use letters, digits, `-`, `_`, `.`, `@` and `:` (no spaces)"
    )]
    BadContextName(String),
    #[error("{0}")]
    BadServer(String),
    #[error("{what} {}: {source}", path.display())]
    BadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One named server and how to reach it. Paths are absolute, so the context works from any
/// directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// Name verified in the server's certificate instead of the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The settings a `config set-…` command changes in a context: only those given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextUpdate {
    pub server: Option<String>,
    pub cacert: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// `$XDG_CONFIG_HOME/stowage/config`, else `~/.config/stowage/config`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    dirs::config_dir()
        .map(|dir| dir.join("stowage").join("config"))
        .ok_or(ConfigError::NoConfigDir)
}

/// The name given to the context `config set-server` creates when there is none.
pub const DEFAULT_CONTEXT: &str = "default";

fn check_name(name: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.@:".contains(c);
    if name.is_empty() || !name.chars().all(allowed) {
        return Err(ConfigError::BadContextName(name.to_string()));
    }
    Ok(())
}

/// `path` made absolute against the current directory, after checking that it is a file the
/// CLI can read, so a typo is caught when the context is saved rather than at every call.
fn absolute_file(what: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    let bad = |source| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        source,
    };
    std::fs::File::open(path).map_err(bad)?;
    std::path::absolute(path).map_err(bad)
}

impl Config {
    /// The config at `path`; an empty one when the file does not exist yet.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
    }

    /// Writes the whole config to `path`: a new file created with mode 0600 beside it, synced,
    /// then renamed over the old one.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_error = |source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        // A symlinked config is written where it points; anything but a regular file (say
        // STOWAGE_CONFIG=/dev/null, "no config") is never replaced.
        let target = match std::fs::canonicalize(path) {
            Ok(target) => {
                if !target.is_file() {
                    return Err(write_error(std::io::Error::other(
                        "it is not a regular file, so it is not replaced",
                    )));
                }
                target
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
            Err(error) => return Err(write_error(error)),
        };
        let path = target.as_path();
        let text = serde_yaml::to_string(self).map_err(|error| ConfigError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(error),
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(write_error)?;
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".to_string());
        let temporary = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let written = create_private_file(&temporary).and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
        let renamed = written.and_then(|()| std::fs::rename(&temporary, path));
        if let Err(error) = renamed {
            // Best effort: the error that matters is the write's.
            let _ = std::fs::remove_file(&temporary);
            return Err(write_error(error));
        }
        Ok(())
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|context| context.name == name)
    }

    fn known(&self) -> String {
        if self.contexts.is_empty() {
            "none".to_string()
        } else {
            self.contexts
                .iter()
                .map(|context| context.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn unknown(&self, name: &str, path: &Path) -> ConfigError {
        ConfigError::UnknownContext {
            name: name.to_string(),
            path: path.to_path_buf(),
            known: self.known(),
        }
    }

    /// The context a command uses: `explicit` (`--context`), else the current one, else none.
    /// A name that is not in the file is an error, never a silent fallback to defaults.
    pub fn selected(
        &self,
        explicit: Option<&str>,
        path: &Path,
    ) -> Result<Option<&Context>, ConfigError> {
        match explicit.or(self.current_context.as_deref()) {
            None => Ok(None),
            Some(name) => self
                .context(name)
                .map(Some)
                .ok_or_else(|| self.unknown(name, path)),
        }
    }

    /// Creates context `name` or changes the settings `update` gives; the others stay.
    /// Credential files are checked and made absolute.
    pub fn set_context(&mut self, name: &str, update: ContextUpdate) -> Result<(), ConfigError> {
        check_name(name)?;
        if let Some(server) = &update.server {
            crate::connection::check_server(server)
                .map_err(|error| ConfigError::BadServer(error.to_string()))?;
        }
        let files = [
            ("the CA bundle (--cacert)", update.cacert),
            ("the client certificate (--cert)", update.cert),
            ("the client key (--key)", update.key),
            ("the bearer token file (--token-file)", update.token_file),
        ];
        let mut absolute: Vec<Option<PathBuf>> = Vec::new();
        for (what, path) in files {
            absolute.push(path.map(|path| absolute_file(what, &path)).transpose()?);
        }
        let position = match self.contexts.iter().position(|c| c.name == name) {
            Some(position) => position,
            None => {
                self.contexts.push(Context {
                    name: name.to_string(),
                    ..Context::default()
                });
                self.contexts.len() - 1
            }
        };
        let context = &mut self.contexts[position];
        if update.server.is_some() {
            context.server = update.server;
        }
        if update.tls_server_name.is_some() {
            context.tls_server_name = update.tls_server_name;
        }
        let mut absolute = absolute.into_iter();
        for slot in [
            &mut context.cacert,
            &mut context.cert,
            &mut context.key,
            &mut context.token_file,
        ] {
            if let Some(path) = absolute.next().flatten() {
                *slot = Some(path);
            }
        }
        Ok(())
    }

    /// Removes context `name`; the current context is unset when it was that one.
    pub fn delete_context(&mut self, name: &str, path: &Path) -> Result<(), ConfigError> {
        if self.context(name).is_none() {
            return Err(self.unknown(name, path));
        }
        self.contexts.retain(|context| context.name != name);
        if self.current_context.as_deref() == Some(name) {
            self.current_context = None;
        }
        Ok(())
    }

    pub fn use_context(&mut self, name: &str, path: &Path) -> Result<(), ConfigError> {
        if self.context(name).is_none() {
            return Err(self.unknown(name, path));
        }
        self.current_context = Some(name.to_string());
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A new file readable and writable by its owner only, from the moment it exists.
#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "x").unwrap();
        path
    }

    #[test]
    fn a_missing_file_is_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(&dir.path().join("nothing/config")).unwrap();
        assert_eq!(config, Config::default());
        assert!(config.selected(None, dir.path()).unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn saved_config_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = file(dir.path(), "ca.pem");
        let path = dir.path().join("xdg/stowage/config");
        let mut config = Config::default();
        config
            .set_context(
                "prod",
                ContextUpdate {
                    server: Some("https://stowage.example:8080".into()),
                    cacert: Some(ca.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
        config.use_context("prod", &path).unwrap();
        config.save(&path).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Saving again replaces the file whole and keeps it private.
        config.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["config"], "a temporary file was left behind");
        let back = Config::load(&path).unwrap();
        assert_eq!(back, config);
        let selected = back.selected(None, &path).unwrap().unwrap();
        assert_eq!(selected.cacert.as_deref(), Some(ca.as_path()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("current-context: prod"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn what_is_not_a_regular_file_is_never_replaced_and_a_symlink_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            current_context: Some("a".into()),
            contexts: vec![Context {
                name: "a".into(),
                ..Default::default()
            }],
        };
        let error = config.save(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        assert!(Path::new("/dev/null").exists());
        assert_eq!(
            Config::load(Path::new("/dev/null")).unwrap(),
            Config::default()
        );
        let real = dir.path().join("real-config");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        config.save(&link).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(Config::load(&real).unwrap(), config);
    }

    #[test]
    fn set_context_changes_only_what_is_given_and_makes_paths_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let token = file(dir.path(), "token");
        let mut config = Config::default();
        config
            .set_context(
                "dev",
                ContextUpdate {
                    server: Some("http://127.0.0.1:8080".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        config
            .set_context(
                "dev",
                ContextUpdate {
                    token_file: Some(token.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
        let dev = config.context("dev").unwrap();
        assert_eq!(dev.server.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(dev.token_file.as_deref(), Some(token.as_path()));
        assert!(dev.token_file.as_ref().unwrap().is_absolute());
        assert_eq!(config.contexts.len(), 1);
    }

    #[test]
    fn bad_input_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        let missing = dir.path().join("no-such-ca.pem");
        let error = config
            .set_context(
                "dev",
                ContextUpdate {
                    cacert: Some(missing.clone()),
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(error.contains("--cacert"), "{error}");
        assert!(error.contains(&missing.display().to_string()), "{error}");
        assert!(config.contexts.is_empty(), "nothing half-changed");
        let error = config
            .set_context("has space", ContextUpdate::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("`has space`"), "{error}");
        let error = config
            .set_context(
                "dev",
                ContextUpdate {
                    server: Some("stowage:8080".into()),
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(error.contains("`stowage:8080`"), "{error}");
        let path = dir.path().join("config");
        let error = config.use_context("nope", &path).unwrap_err().to_string();
        assert!(error.contains("no context \"nope\""), "{error}");
        let error = config
            .selected(Some("nope"), &path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("(contexts: none)"), "{error}");
    }

    #[test]
    fn a_current_context_that_is_gone_is_an_error() {
        let path = Path::new("/c/config");
        let config = Config {
            current_context: Some("gone".into()),
            contexts: vec![Context {
                name: "other".into(),
                ..Default::default()
            }],
        };
        let error = config.selected(None, path).unwrap_err().to_string();
        assert!(error.contains("\"gone\""), "{error}");
        assert!(error.contains("(contexts: other)"), "{error}");
        assert_eq!(
            config.selected(Some("other"), path).unwrap().unwrap().name,
            "other"
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "contexts:\n- name: a\n  sever: http://x\n").unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("sever"), "{error}");
    }
}
