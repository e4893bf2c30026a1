//! Named client contexts, as kubectl and the Temporal CLI have them: where a cluster is and which
//! credentials folder speaks to it, kept in one TOML file in the user's config folder so that a
//! new terminal needs no exports. `batond dev` writes the `dev` context; `baton context` lists,
//! shows, sets, deletes and switches them; `baton` uses the current one when no flag or
//! variable says otherwise.
//!
//! ```toml
//! current = "dev"
//!
//! [contexts.dev]
//! endpoints = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
//! credentials = "/home/me/baton/.baton-dev/client"
//! ```
//!
//! The file is `$BATON_CLIENT_CONFIG` if set, else `$XDG_CONFIG_HOME/baton/config.toml`, else
//! `~/.config/baton/config.toml`. It is written whole, to a temporary file that is then renamed
//! over it, owner-readable only (it names credentials folders).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable that names the file outright.
pub const CONFIG_ENV: &str = "BATON_CLIENT_CONFIG";

/// A context name's longest form.
pub const CONTEXT_NAME_BYTES_MAX: usize = 64;

/// One cluster as a client reaches it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `HOST:PORT,...`, as `--endpoints` takes them.
    pub endpoints: String,
    /// A credentials folder (`ca.pem`, `cert.pem`, `key.pem`, `token`); none for a plaintext
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context `baton` uses when nothing else is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no config folder: set HOME, XDG_CONFIG_HOME or {CONFIG_ENV}")]
    NoConfigFolder,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("context name {0:?}: use 1 to {CONTEXT_NAME_BYTES_MAX} of [A-Za-z0-9._-]")]
    BadName(String),
    #[error("no context {name:?} in {} (`baton context list` shows them)", path.display())]
    Unknown { name: String, path: PathBuf },
}

/// Where the file is: [`CONFIG_ENV`], else the XDG config folder, else `~/.config`.
pub fn default_path() -> Result<PathBuf, ContextError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var(CONFIG_ENV) {
        return Ok(PathBuf::from(path));
    }
    let base = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))
        .ok_or(ContextError::NoConfigFolder)?;
    Ok(base.join("baton").join("config.toml"))
}

/// Checks a context name: it goes into a TOML key and a terminal.
pub fn check_name(name: &str) -> Result<(), ContextError> {
    let ok = !name.is_empty()
        && name.len() <= CONTEXT_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ContextError::BadName(name.to_owned()))
    }
}

impl Contexts {
    /// Reads the file; a file that does not exist is no contexts at all.
    pub fn load(path: &Path) -> Result<Contexts, ContextError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(source) => {
                return Err(ContextError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let contexts: Contexts = toml::from_str(&text).map_err(|e| ContextError::Invalid {
            path: path.to_owned(),
            // toml's message names the line and column.
            message: e.to_string().trim_end().to_owned(),
        })?;
        for name in contexts.contexts.keys() {
            check_name(name).map_err(|e| ContextError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
        Ok(contexts)
    }

    /// Writes the file whole (a temporary file renamed over it), creating its folder.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let io = |source| ContextError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string(self).map_err(|e| ContextError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(b"# Baton client contexts: written by `batond dev` and `baton context`.\n")
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The named context.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context, ContextError> {
        self.contexts
            .get(name)
            .ok_or_else(|| ContextError::Unknown {
                name: name.to_owned(),
                path: path.to_owned(),
            })
    }

    /// The current context and its name, if one is set and still exists.
    pub fn current(&self) -> Option<(&str, &Context)> {
        let name = self.current.as_deref()?;
        self.contexts.get(name).map(|context| (name, context))
    }

    /// Adds or replaces a context.
    pub fn set(&mut self, name: &str, context: Context) -> Result<(), ContextError> {
        check_name(name)?;
        self.contexts.insert(name.to_owned(), context);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        assert_eq!(Contexts::load(&path).unwrap(), Contexts::default());
        let mut contexts = Contexts::default();
        contexts
            .set(
                "dev",
                Context {
                    endpoints: "127.0.0.1:7001".into(),
                    credentials: Some("/x/client".into()),
                },
            )
            .unwrap();
        contexts
            .set(
                "plain",
                Context {
                    endpoints: "10.0.0.1:7001".into(),
                    credentials: None,
                },
            )
            .unwrap();
        contexts.current = Some("dev".into());
        contexts.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let read = Contexts::load(&path).unwrap();
        assert_eq!(read, contexts);
        assert_eq!(read.current().unwrap().0, "dev");
        assert!(matches!(
            read.get("prod", &path),
            Err(ContextError::Unknown { .. })
        ));
    }

    #[test]
    fn a_bad_file_or_name_is_refused_with_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "current = \"dev\"\n[contexts.dev]\nendpoint = \"x\"\n",
        )
        .unwrap();
        let err = Contexts::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && err.contains("line 3"),
            "{err}"
        );
        std::fs::write(&path, "[contexts.\"a b\"]\nendpoints = \"x\"\n").unwrap();
        let err = Contexts::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"a b\""), "{err}");
        let mut contexts = Contexts::default();
        assert!(contexts.set("", Context::default()).is_err());
        assert!(contexts.set(&"x".repeat(65), Context::default()).is_err());
        assert!(contexts.set("prod-eu.1_a", Context::default()).is_ok());
    }
}
