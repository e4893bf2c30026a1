//! Secrets: specs name them (`{{ secrets.NAME }}` in an exec step's command and env, an http
//! step's url, headers and body); the agent that runs the step resolves them from a source of
//! its own. Their values never reach the cluster: not the Raft log, snapshots, events or API
//! answers. The agent masks every value it filled in out of the attempt's captured output and
//! error before reporting them.
//!
//! A step resolves only its own namespace's secrets, so a team cannot read another's by
//! submitting a step that prints one:
//! - a folder of files (`baton agent --secrets-dir DIR`): `DIR/NAMESPACE/NAME` for a namespace,
//!   and `DIR/NAME` for `default` (one file per secret, as a Kubernetes Secret volume or a
//!   Vault agent sink lays them out; a final newline is not part of the value);
//! - for `default` only, the agent's environment (`BATON_SECRET_<NAME>`, the name upper-cased
//!   with anything but letters and digits as `_`), which no step's process inherits.
//!
//! Files are read at each attempt, so a rotated secret is used from the next attempt on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use baton_proto::validate::{secret_references as referenced, valid_secret_name};

use crate::agent::template::env_name_part;

/// The environment variable prefix of secrets given by environment.
pub const SECRET_ENV_PREFIX: &str = "BATON_SECRET_";

/// What a masked value reads as in captured output and errors.
pub const MASK: &str = "***";

/// Where an agent finds secrets' values.
#[derive(Clone, Debug, Default)]
pub struct SecretSource {
    /// A folder with one file per secret.
    pub dir: Option<PathBuf>,
}

impl SecretSource {
    /// The value of secret `name`: Ok(None) when no source has it; Err naming the file when
    /// one that exists cannot be read.
    pub fn lookup(&self, namespace: &str, name: &str) -> Result<Option<String>, String> {
        self.lookup_in(namespace, name, |var| std::env::var(var).ok())
    }

    /// [`SecretSource::lookup`] with `env` for the process environment.
    fn lookup_in(
        &self,
        namespace: &str,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, String> {
        let default = namespace.is_empty() || namespace == "default";
        if !valid_secret_name(name) || (!default && !valid_secret_name(namespace)) {
            return Ok(None);
        }
        if let Some(dir) = &self.dir {
            let path = match default {
                true => dir.join(name),
                false => dir.join(namespace).join(name),
            };
            match std::fs::read_to_string(&path) {
                Ok(mut value) => {
                    if value.ends_with('\n') {
                        value.pop();
                        if value.ends_with('\r') {
                            value.pop();
                        }
                    }
                    return Ok(Some(value));
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(format!("secret {name:?}: {}: {error}", path.display()));
                }
            }
        }
        if !default {
            return Ok(None);
        }
        Ok(env(&format!("{SECRET_ENV_PREFIX}{}", env_name_part(name))))
    }

    /// The values of every secret named in `texts` that a source has. A name no source has is
    /// left out: filling in its template fails, naming the field.
    pub fn resolve<'a>(
        &self,
        namespace: &str,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut values = BTreeMap::new();
        for text in texts {
            for name in referenced(text) {
                if values.contains_key(name) {
                    continue;
                }
                if let Some(value) = self.lookup(namespace, name)? {
                    values.insert(name.to_string(), value);
                }
            }
        }
        Ok(values)
    }
}

/// Where an agent looks for secret `name` of `namespace`, for the error of a missing one.
pub fn where_looked(namespace: &str, name: &str) -> String {
    if namespace.is_empty() || namespace == "default" {
        format!(
            "a file {name:?} in its --secrets-dir, or {SECRET_ENV_PREFIX}{} in its environment",
            env_name_part(name)
        )
    } else {
        format!(
            "a file \"{namespace}/{name}\" in its --secrets-dir: a step of namespace {namespace} \
             reads that namespace's secrets only"
        )
    }
}

/// `text` with every value of `secrets` replaced by [`MASK`], longest first (so a secret that
/// contains another is masked whole). Empty values mask nothing.
pub fn mask(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut values: Vec<&str> = secrets
        .values()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return text.to_string();
    }
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for value in values {
        if out.contains(value) {
            out = out.replace(value, MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_then_the_environment_is_asked_and_names_stay_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db-password"), "s3cret-value\n").unwrap();
        std::fs::write(dir.path().join("raw"), "no-newline").unwrap();
        let source = SecretSource {
            dir: Some(dir.path().to_owned()),
        };
        assert_eq!(
            source.lookup("", "db-password").unwrap().as_deref(),
            Some("s3cret-value")
        );
        assert_eq!(
            source.lookup("default", "raw").unwrap().as_deref(),
            Some("no-newline")
        );
        assert_eq!(source.lookup("", "missing").unwrap(), None);
        // Never a path: not `..`, not a slash.
        assert_eq!(source.lookup("", "../etc/passwd").unwrap(), None);
        assert_eq!(source.lookup("", "..").unwrap(), None);
        assert_eq!(source.lookup("..", "db-password").unwrap(), None);
        let env = |var: &str| (var == "BATON_SECRET_FROM_ENV_TEST").then(|| "env-value".into());
        assert_eq!(
            source
                .lookup_in("", "from-env.test", env)
                .unwrap()
                .as_deref(),
            Some("env-value")
        );
        // The folder wins over the environment.
        let env = |_: &str| Some("from-env".to_string());
        assert_eq!(
            source.lookup_in("", "raw", env).unwrap().as_deref(),
            Some("no-newline")
        );
        let values = source
            .resolve(
                "",
                [
                    "{{ secrets.db-password }}",
                    "{{ secrets.missing }} {{ secrets.raw }}",
                ],
            )
            .unwrap();
        assert_eq!(values.len(), 2);
        // Another namespace sees its own folder only: not default's files, not the
        // environment.
        std::fs::create_dir(dir.path().join("team-a")).unwrap();
        std::fs::write(dir.path().join("team-a").join("db-password"), "team-a-pw").unwrap();
        assert_eq!(
            source.lookup("team-a", "db-password").unwrap().as_deref(),
            Some("team-a-pw")
        );
        assert_eq!(source.lookup("team-a", "raw").unwrap(), None);
        let env = |_: &str| Some("from-env".to_string());
        assert_eq!(source.lookup_in("team-a", "anything", env).unwrap(), None);
        assert_eq!(source.lookup("team-b", "db-password").unwrap(), None);
    }

    #[test]
    fn every_value_is_masked_longest_first() {
        let secrets = BTreeMap::from([
            ("a".to_string(), "hunter2".to_string()),
            ("b".to_string(), "hunter22-long".to_string()),
            ("empty".to_string(), String::new()),
        ]);
        assert_eq!(
            mask("pw=hunter22-long and hunter2, twice hunter2", &secrets),
            "pw=*** and ***, twice ***"
        );
        assert_eq!(mask("nothing here", &secrets), "nothing here");
    }
}
