//! Image references as docker spells them, normalised as docker does:
//! `alpine` is `docker.io/library/alpine:latest`, `owner/img:tag` is on
//! `docker.io`, a first component with a `.` or a `:`, or `localhost`, is a
//! registry host (`ghcr.io/owner/img`, `127.0.0.1:5000/name:tag`), and
//! `name@sha256:<hex>` pins a digest (a tag beside it is kept for display
//! only, as docker does).

use super::RegistryError;

/// Docker Hub's name in references, and where its API is.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The longest repository name docker accepts.
const MAX_NAME: usize = 255;
/// The longest tag the distribution spec accepts.
const MAX_TAG: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as the reference names it (`docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`).
    pub registry: String,
    /// The repository (`library/alpine`).
    pub repository: String,
    /// The tag: as given, or `latest` when neither a tag nor a digest is.
    pub tag: Option<String>,
    /// `sha256:<hex>`, when the reference pins one.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text` (with or without `docker://`) by docker's rules.
    pub fn parse(text: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::BadReference {
            reference: super::shown(text),
            why: why.to_string(),
        };
        let body = text.strip_prefix("docker://").unwrap_or(text);
        if body.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match body.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the digest after @ must be sha256:<64 hex digits>"))?;
                if !is_hex64(hex) {
                    return Err(bad("the digest after @ must be sha256:<64 hex digits>"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (body, None),
        };
        // The tag is after the last `:` that follows the last `/` (a `:`
        // before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(bad(
                    "the tag must be 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_host(first) {
                    return Err(bad("the registry must be HOST or HOST:PORT"));
                }
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > MAX_NAME {
            return Err(bad("the repository name is longer than 255 characters"));
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("the repository name must be lowercase"));
        }
        if !repository.split('/').all(is_path_component) {
            return Err(bad(
                "each part of the name must be lowercase letters and digits, \
                 joined by `.`, `_`, `__` or dashes",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) the API is on: Docker Hub's API host for
    /// `docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The host without its port, for `--insecure-registry` and the
    /// loopback rule.
    pub fn host_name(&self) -> &str {
        host_without_port(&self.registry)
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the registry is asked for: the digest when one is pinned (the
    /// tag is then never looked at), else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `host` without a `:port` (an IPv6 literal in brackets keeps them).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host(:port)?`: DNS labels, an IPv4 address, or an IPv6 literal in
/// brackets, and a decimal port.
fn is_host(text: &str) -> bool {
    let (host, port) = if text.starts_with('[') {
        match text.split_once(']') {
            Some((h, rest)) => (&text[..h.len() + 1], rest.strip_prefix(':')),
            None => return false,
        }
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.trim_end_matches(']');
        return !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (r.registry, r.repository, r.tag, r.digest)
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_get_the_registry_library_and_latest() {
        let want = |repo: &str, tag: &str| {
            (
                "docker.io".to_string(),
                repo.to_string(),
                Some(tag.to_string()),
                None,
            )
        };
        assert_eq!(parts("alpine"), want("library/alpine", "latest"));
        assert_eq!(parts("alpine:3.20"), want("library/alpine", "3.20"));
        assert_eq!(parts("library/alpine"), want("library/alpine", "latest"));
        assert_eq!(
            parts("docker.io/library/alpine:3.20"),
            want("library/alpine", "3.20")
        );
        assert_eq!(
            parts("index.docker.io/alpine"),
            want("library/alpine", "latest")
        );
        assert_eq!(
            parts("docker://alpine:3.20"),
            want("library/alpine", "3.20")
        );
        assert_eq!(parts("owner/img:v1.2-rc_3"), want("owner/img", "v1.2-rc_3"));
        let alpine = Reference::parse("alpine").unwrap();
        assert_eq!(alpine.api_host(), "registry-1.docker.io");
        assert_eq!(alpine.to_string(), "docker.io/library/alpine:latest");
    }

    #[test]
    fn a_first_part_with_a_dot_a_port_or_localhost_is_a_registry() {
        assert_eq!(
            parts("ghcr.io/owner/img:tag"),
            (
                "ghcr.io".into(),
                "owner/img".into(),
                Some("tag".into()),
                None
            )
        );
        assert_eq!(
            parts("127.0.0.1:5000/name:tag"),
            (
                "127.0.0.1:5000".into(),
                "name".into(),
                Some("tag".into()),
                None
            )
        );
        assert_eq!(
            parts("localhost/a/b"),
            (
                "localhost".into(),
                "a/b".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts("localhost:5000/a"),
            (
                "localhost:5000".into(),
                "a".into(),
                Some("latest".into()),
                None
            )
        );
        let r = Reference::parse("127.0.0.1:5000/name").unwrap();
        assert_eq!(
            (r.api_host(), r.host_name()),
            ("127.0.0.1:5000", "127.0.0.1")
        );
        assert_eq!(host_without_port("[::1]:5000"), "[::1]");
    }

    #[test]
    fn a_digest_pins_the_image_and_the_tag_is_not_asked_for() {
        let digest = format!("sha256:{HEX}");
        let r = Reference::parse(&format!("alpine@{digest}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.manifest_reference(), digest);
        let r = Reference::parse(&format!("host:1/a/b:t@{digest}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("host:1", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.manifest_reference(), digest);
        assert_eq!(r.to_string(), format!("host:1/a/b:t@{digest}"));
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "empty"),
            ("Alpine", "lowercase"),
            ("alpine:", "tag"),
            ("alpine:.x", "tag"),
            ("alpine@sha256:abc", "digest"),
            ("alpine@md5:0123", "digest"),
            ("a//b", "part of the name"),
            ("./rootfs", "registry"),
            ("/abs/path", "part of the name"),
            ("a-/b", "part of the name"),
            ("a..b/c", "registry"),
            ("host:port/x", "registry"),
            ("a/b c", "part of the name"),
        ] {
            let err = Reference::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(Reference::parse(&long).is_err());
        let tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&tag).is_err());
        assert!(is_path_component("a__b") && is_path_component("a---b"));
        assert!(!is_path_component("a___b") && !is_path_component("a.-b"));
    }
}
