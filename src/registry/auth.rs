//! The user's existing registry credentials: `$REGISTRY_AUTH_FILE`,
//! podman's `${XDG_RUNTIME_DIR}/containers/auth.json`, then docker's
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, each read for
//! its `auths` entries (`{"auths": {"HOST": {"auth": base64(USER:PASSWORD)}}}`).
//! A credential helper (`credsStore`, `credHelpers`) is never run: it
//! would run a program the user did not ask microrun to run.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use super::reference::{Reference, DOCKER_HUB};

/// The most a credential file may take: they are kilobytes.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// A user name and password for one registry, and where they came from.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password or token.
    pub password: String,
    /// The file they were read from.
    pub source: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What the search found: the credentials, if any, and for messages the
/// files that were looked at and what was skipped.
#[derive(Debug, Default)]
pub struct Search {
    /// The first matching entry.
    pub found: Option<Credentials>,
    /// Every file that exists and was read.
    pub read: Vec<PathBuf>,
    /// Why a file or an entry was not used (a helper, bad JSON).
    pub notes: Vec<String>,
}

/// The credential files, in the order they are read.
pub fn files() -> Vec<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let mut out = Vec::new();
    if let Some(file) = var("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(file));
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        out.push(Path::new(&dir).join("containers/auth.json"));
    }
    if let Some(dir) = var("DOCKER_CONFIG") {
        out.push(Path::new(&dir).join("config.json"));
    } else if let Some(home) = var("HOME") {
        out.push(Path::new(&home).join(".docker/config.json"));
    }
    out
}

/// The credentials for `reference` from the first file of `files` that
/// has an entry for its registry (the longest matching key within a file:
/// `host/namespace` before `host`).
pub fn search(reference: &Reference, files: &[PathBuf]) -> Search {
    let mut search = Search::default();
    for file in files {
        let text = match read_bounded(file) {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(why) => {
                search.notes.push(format!("{}: {why}", file.display()));
                continue;
            }
        };
        search.read.push(file.clone());
        let json: Value = match serde_json::from_slice(&text) {
            Ok(json) => json,
            Err(e) => {
                search
                    .notes
                    .push(format!("{}: not JSON ({e}), skipped", file.display()));
                continue;
            }
        };
        if let Some(found) = entry_for(&json, reference, file, &mut search.notes) {
            search.found = Some(found);
            return search;
        }
        let helper = json.get("credsStore").is_some()
            || json
                .get("credHelpers")
                .and_then(Value::as_object)
                .is_some_and(|h| h.keys().any(|k| key_matches(k, reference).is_some()));
        if helper {
            search.notes.push(format!(
                "{} names a credential helper for this registry, which microrun does not run \
                 (write the login into $REGISTRY_AUTH_FILE: `podman login --authfile FILE` or \
                 `skopeo login --authfile FILE`)",
                file.display()
            ));
        }
    }
    search
}

fn read_bounded(file: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let mut text = Vec::new();
    f.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_AUTH_FILE {
        return Err(format!("larger than {MAX_AUTH_FILE} bytes, skipped"));
    }
    Ok(Some(text))
}

fn entry_for(
    json: &Value,
    reference: &Reference,
    file: &Path,
    notes: &mut Vec<String>,
) -> Option<Credentials> {
    let auths = json.get("auths")?.as_object()?;
    let (_, entry) = auths
        .iter()
        .filter_map(|(key, entry)| key_matches(key, reference).map(|len| (len, entry)))
        .max_by_key(|(len, _)| *len)?;
    let auth = entry.get("auth").and_then(Value::as_str).unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(|text| text.split_once(':')) {
        Some((user, password)) if !user.is_empty() => Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
            source: file.to_path_buf(),
        }),
        _ => {
            notes.push(format!(
                "{}: the entry for {} has no usable \"auth\" (base64 of USER:PASSWORD), skipped",
                file.display(),
                reference.registry
            ));
            None
        }
    }
}

/// How specific `key` is for `reference` (its length), when it applies:
/// `HOST`, `HOST/NAMESPACE...` (podman), or a URL of either (docker's
/// `https://index.docker.io/v1/` for Docker Hub).
fn key_matches(key: &str, reference: &Reference) -> Option<usize> {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    let (host, path) = match key.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (key, None),
    };
    let hub = |h: &str| matches!(h, "index.docker.io" | "registry-1.docker.io" | DOCKER_HUB);
    let same_host = host == reference.registry || (reference.registry == DOCKER_HUB && hub(host));
    if !same_host {
        return None;
    }
    match path {
        None => Some(host.len()),
        Some(path) => {
            let repo = &reference.repository;
            let under = repo == path
                || repo
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('/'));
            under.then(|| host.len() + 1 + path.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, json).unwrap();
        path
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn the_first_file_with_an_entry_wins_and_the_longest_key_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let hub = write(
            dir.path(),
            "docker.json",
            &format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#,
                b64("hubuser:hubpass")
            ),
        );
        let podman = write(
            dir.path(),
            "auth.json",
            &format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "ghcr.io/team": {{"auth": "{}"}}}}}}"#,
                b64("a:1"),
                b64("team:2:with:colons")
            ),
        );
        let files = [missing, podman.clone(), hub.clone()];
        let search = super::search(&Reference::parse("alpine").unwrap(), &files);
        let found = search.found.unwrap();
        assert_eq!(
            (found.user.as_str(), found.password.as_str()),
            ("hubuser", "hubpass")
        );
        assert_eq!(found.source, hub);
        assert_eq!(search.read, [podman.clone(), hub.clone()]);

        let team = super::search(&Reference::parse("ghcr.io/team/app").unwrap(), &files);
        let found = team.found.unwrap();
        assert_eq!(
            (found.user.as_str(), found.password.as_str()),
            ("team", "2:with:colons")
        );
        let other = super::search(&Reference::parse("ghcr.io/teams/app").unwrap(), &files);
        assert_eq!(other.found.unwrap().user, "a");
        let none = super::search(&Reference::parse("quay.io/x").unwrap(), &files);
        assert!(none.found.is_none());
        assert_eq!(none.read.len(), 2);
    }

    #[test]
    fn helpers_are_never_run_and_bad_files_are_skipped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let helper = write(
            dir.path(),
            "helper.json",
            r#"{"auths": {}, "credsStore": "pass"}"#,
        );
        let bad = write(dir.path(), "bad.json", "{not json");
        let empty = write(
            dir.path(),
            "empty.json",
            r#"{"auths": {"quay.io": {"auth": "!!"}}}"#,
        );
        let search = super::search(
            &Reference::parse("quay.io/x").unwrap(),
            &[bad, empty, helper],
        );
        assert!(search.found.is_none());
        let notes = search.notes.join("\n");
        assert!(notes.contains("not JSON"), "{notes}");
        assert!(notes.contains("no usable \"auth\""), "{notes}");
        assert!(notes.contains("credential helper"), "{notes}");
    }
}
