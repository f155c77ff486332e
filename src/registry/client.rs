//! The OCI distribution spec's pull side over a small blocking HTTP client
//! (`ureq` with rustls): `GET /v2/<name>/manifests/<ref>` and
//! `GET /v2/<name>/blobs/<digest>`, with the token flow docker uses
//! (a 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
//! sends microrun to the realm for a token, anonymously first, then with
//! the user's credentials) and `Basic` auth. Every body is bounded: a
//! manifest or a token by a cap, a blob by its descriptor's size.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use ureq::config::RedirectAuthHeaders;
use ureq::http::{Response, StatusCode, Uri};
use ureq::Body;

use super::auth::{self, Credentials};
use super::reference::Reference;
use super::{shown, RegistryError};

/// The largest manifest or index accepted (containerd's limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest token response accepted.
const MAX_TOKEN: u64 = 1 << 20;
/// How much of an error response's body a message may quote.
const MAX_ERROR_BODY: u64 = 16 << 10;
/// Connecting, and each read, may take this long before the pull fails.
const NETWORK_WAIT: Duration = Duration::from_secs(30);
/// A whole request may take [`NETWORK_WAIT`] twice and its body's length
/// at this rate (bytes per second): a registry that answers at once and
/// then trickles its body cannot hold a pull for ever, with or without
/// `--timeout`.
const MIN_RATE: u64 = 32 << 10;

/// The manifest media types microrun asks for and reads.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A manifest or index as the registry served it.
#[derive(Debug)]
pub struct Manifest {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of its bytes (checked against the reference's digest
    /// and the registry's `Docker-Content-Digest`).
    pub digest: String,
    /// The `Content-Type` it came with.
    pub media_type: String,
}

/// One registry, one repository.
pub struct Client {
    agent: ureq::Agent,
    reference: Reference,
    /// `http` only for loopback and `--insecure-registry` hosts, after
    /// `https` failed to connect (as docker does).
    scheme: &'static str,
    /// Whether plain HTTP may be tried.
    insecure: bool,
    /// `--insecure-registry` hosts, for the token realm's own host.
    named_insecure: Vec<String>,
    /// When `--timeout` expires (counted from microrun's start): no
    /// request outlives it.
    deadline: Option<Instant>,
    /// The `Authorization` header value, once the registry asked for one.
    authorization: Option<String>,
    /// The credential files' search, once made.
    search: Option<auth::Search>,
    /// Whether tokens are asked for with the user's credentials (after
    /// the registry refused anonymous access).
    use_credentials: bool,
}

impl Client {
    /// A client for `reference`'s repository. Plain HTTP is allowed only
    /// where [`super::is_insecure`] says (loopback, or `named_insecure`);
    /// everywhere else the agent is `https_only`, so a redirect to
    /// `http://` is refused. `deadline` (`--timeout`'s end) bounds every
    /// request.
    pub fn new(
        reference: &Reference,
        named_insecure: &[String],
        deadline: Option<Instant>,
    ) -> Client {
        let insecure = super::is_insecure(reference, named_insecure);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(!insecure)
            // Blobs are commonly redirected to a CDN: the registry's token
            // must not follow (ureq's default, stated here on purpose).
            .redirect_auth_headers(RedirectAuthHeaders::Never)
            .timeout_connect(Some(NETWORK_WAIT))
            .timeout_recv_response(Some(NETWORK_WAIT))
            .timeout_per_read(Some(NETWORK_WAIT))
            .max_redirects(8)
            .max_response_header_size(64 << 10)
            .user_agent(concat!("microrun/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            reference: reference.clone(),
            scheme: "https",
            insecure,
            named_insecure: named_insecure.to_vec(),
            deadline,
            authorization: None,
            search: None,
            use_credentials: false,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}/v2/{}/{path}",
            self.scheme,
            self.reference.api_host(),
            self.reference.repository
        )
    }

    /// The manifest or index `reference` (a tag or a digest) names, its
    /// digest computed and checked.
    pub fn manifest(&mut self, reference: &str) -> Result<Manifest, RegistryError> {
        let mut response = self.get(
            &format!("manifests/{reference}"),
            Some(ACCEPT),
            MAX_MANIFEST,
        )?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                reference: self.reference.to_string(),
                name: self.reference.name(),
            });
        }
        self.check_status(&mut response, "the manifest")?;
        let media_type = header(&response, "content-type").unwrap_or_default();
        let served = header(&response, "docker-content-digest");
        let bytes = read_capped(
            response.into_body().into_with_config().reader(),
            MAX_MANIFEST,
        )
        .map_err(|e| match e {
            Capped::TooLarge => RegistryError::TooLarge {
                registry: self.reference.registry.clone(),
                what: format!("the manifest of {}", self.reference),
                limit: MAX_MANIFEST,
            },
            Capped::Io(e) => self.network(e),
        })?;
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            served.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(expected) = expected {
            if expected != digest {
                return Err(RegistryError::WrongDigest {
                    registry: self.reference.registry.clone(),
                    what: format!("the manifest of {}", self.reference),
                    expected,
                    actual: digest,
                });
            }
        }
        Ok(Manifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Streams the blob `digest` (`sha256:<hex>`) of `size` bytes into
    /// `out`, checking both while it streams; `progress` hears of every
    /// chunk. Nothing past `size` bytes is read.
    pub fn blob(
        &mut self,
        digest: &str,
        size: u64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), RegistryError> {
        let mut response = self.get(&format!("blobs/{digest}"), None, size)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::BlobNotFound {
                reference: self.reference.to_string(),
                digest: digest.to_string(),
            });
        }
        self.check_status(&mut response, "a blob")?;
        let mut body = response
            .into_body()
            .into_with_config()
            .reader()
            .take(size.saturating_add(1));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.network(e)),
            };
            total += n as u64;
            if total > size {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|source| RegistryError::Store {
                    what: format!("blob {digest}"),
                    source,
                })?;
            progress(n as u64);
        }
        if total != size {
            return Err(RegistryError::WrongSize {
                registry: self.reference.registry.clone(),
                digest: digest.to_string(),
                expected: size,
                actual: if total > size {
                    format!("more than {size}")
                } else {
                    total.to_string()
                },
            });
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != digest {
            return Err(RegistryError::WrongDigest {
                registry: self.reference.registry.clone(),
                what: format!("the blob {digest} of {}", self.reference),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// A GET under `/v2/<name>/`, authenticating when the registry asks.
    ///
    /// On a 401 the first answer is a fresh token at the level already in
    /// use (anonymous, or the user's credentials): a token expires (Docker
    /// Hub's after 5 minutes, shorter than a big pull). A second 401 in
    /// the same request, or a realm that gives no anonymous token, moves
    /// to the user's credentials; a 401 after those is the error.
    fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        size: u64,
    ) -> Result<Response<Body>, RegistryError> {
        let mut response = self.send(path, accept, size)?;
        let mut refreshed = false;
        for _ in 0..3 {
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let Some(challenge) = header(&response, "www-authenticate") else {
                break;
            };
            let challenge = Challenge::parse(&challenge);
            let bearer = challenge.scheme == "bearer";
            // Basic auth has no anonymous level: the credentials at once.
            let escalate = refreshed || !bearer;
            refreshed = true;
            if escalate && !self.use_credentials {
                if self.credentials().is_none() {
                    break;
                }
                self.use_credentials = true;
            } else if escalate {
                break;
            }
            let credentials = if self.use_credentials {
                self.credentials()
            } else {
                None
            };
            self.authorization = Some(match challenge.scheme.as_str() {
                "bearer" => match self.token(&challenge, credentials.as_ref()) {
                    Ok(token) => format!("Bearer {token}"),
                    // A realm that gives no anonymous token: the login.
                    Err(RegistryError::AuthRequired { .. }) if !self.use_credentials => {
                        let Some(found) = self.credentials() else {
                            break;
                        };
                        self.use_credentials = true;
                        format!("Bearer {}", self.token(&challenge, Some(&found))?)
                    }
                    Err(e) => return Err(e),
                },
                "basic" => match &credentials {
                    Some(c) => basic(c),
                    None => break,
                },
                _ => break,
            });
            response = self.send(path, accept, size)?;
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(self.auth_required());
        }
        Ok(response)
    }

    fn credentials(&mut self) -> Option<Credentials> {
        let reference = self.reference.clone();
        self.search
            .get_or_insert_with(|| auth::search(&reference, &auth::files()))
            .found
            .clone()
    }

    fn auth_required(&mut self) -> RegistryError {
        let reference = self.reference.clone();
        let search = self
            .search
            .get_or_insert_with(|| auth::search(&reference, &auth::files()));
        let read = match (&search.found, search.read.is_empty()) {
            (Some(found), _) => format!(
                "the credentials for {} in {} were refused",
                reference.registry,
                found.source.display()
            ),
            (None, true) => format!(
                "no credential file was found (looked for {})",
                auth::files()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, false) => format!(
                "{} has no entry for {}",
                search
                    .read
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                reference.registry
            ),
        };
        let mut notes = search.notes.join("; ");
        if !notes.is_empty() {
            notes.insert_str(0, " (");
            notes.push(')');
        }
        RegistryError::AuthRequired {
            reference: reference.to_string(),
            registry: reference.registry.clone(),
            read: format!("{read}{notes}"),
        }
    }

    /// How long a request whose body is at most `size` bytes may take in
    /// all (body included): [`request_limit`] from now; the timeout
    /// error when `--timeout` has already expired.
    fn limit(&self, size: u64) -> Result<Duration, RegistryError> {
        request_limit(size, self.deadline, Instant::now()).ok_or_else(|| self.timed_out())
    }

    fn timed_out(&self) -> RegistryError {
        RegistryError::TimedOut {
            reference: self.reference.to_string(),
        }
    }

    /// One GET with the current authorization; `https` first, plain HTTP
    /// after a failed connection where allowed. `size` bounds the time the
    /// whole request may take.
    fn send(
        &mut self,
        path: &str,
        accept: Option<&str>,
        size: u64,
    ) -> Result<Response<Body>, RegistryError> {
        loop {
            let mut request = self
                .agent
                .get(&self.url(path))
                .config()
                .timeout_global(Some(self.limit(size)?))
                .build();
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            if let Some(auth) = &self.authorization {
                request = request.header("Authorization", auth);
            }
            match request.call() {
                Ok(response) => return Ok(response),
                Err(e) if self.insecure && self.scheme == "https" && is_connection_error(&e) => {
                    log::debug!(
                        "{}: https failed ({e}); plain HTTP, as --insecure-registry allows",
                        self.reference.registry
                    );
                    self.scheme = "http";
                }
                Err(e) => return Err(self.network(ureq_to_io(e))),
            }
        }
    }

    /// A token from the challenge's realm for pulling this repository.
    fn token(
        &mut self,
        challenge: &Challenge,
        credentials: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let realm = challenge.param("realm").unwrap_or_default();
        // Plain HTTP by the realm's own host: a loopback registry may name
        // a realm elsewhere, and the user's credentials go to the realm.
        let realm_insecure = realm_is_insecure(&realm, &self.named_insecure);
        if !realm.starts_with("https://") && !realm_insecure {
            return Err(RegistryError::Protocol {
                registry: self.reference.registry.clone(),
                detail: format!(
                    "its token realm {} is not an https URL (plain HTTP only for localhost, \
                     127.0.0.0/8, [::1] and --insecure-registry hosts)",
                    shown(&realm)
                ),
            });
        }
        let scope = challenge
            .param("scope")
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut request = self
            .agent
            .get(&realm)
            .config()
            .https_only(!realm_insecure)
            .timeout_global(Some(self.limit(MAX_TOKEN)?))
            .build()
            .query("scope", &scope);
        if let Some(service) = challenge.param("service") {
            request = request.query("service", &service);
        }
        if let Some(credentials) = credentials {
            request = request
                .query("account", &credentials.user)
                .header("Authorization", &basic(credentials));
        }
        let mut response = request.call().map_err(|e| self.network(ureq_to_io(e)))?;
        if response.status() == StatusCode::UNAUTHORIZED
            || response.status() == StatusCode::FORBIDDEN
        {
            return Err(self.auth_required());
        }
        self.check_status(&mut response, "a token")?;
        let body = read_capped(response.into_body().into_with_config().reader(), MAX_TOKEN)
            .map_err(|e| match e {
                Capped::TooLarge => RegistryError::TooLarge {
                    registry: self.reference.registry.clone(),
                    what: "the token response".into(),
                    limit: MAX_TOKEN,
                },
                Capped::Io(e) => self.network(e),
            })?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                registry: self.reference.registry.clone(),
                detail: format!("its token response is not JSON: {e}"),
            })?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Protocol {
                registry: self.reference.registry.clone(),
                detail: "its token response has no usable \"token\"".into(),
            })
    }

    /// Turns any status other than success into the error that names it.
    fn check_status(&self, response: &mut Response<Body>, what: &str) -> Result<(), RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let registry = self.reference.registry.clone();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(RegistryError::RateLimited {
                registry,
                retry_after: header(response, "retry-after"),
            });
        }
        if status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied {
                reference: self.reference.to_string(),
            });
        }
        let body = read_capped(response.body_mut().with_config().reader(), MAX_ERROR_BODY)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Err(RegistryError::Status {
            registry,
            what: what.to_string(),
            status: status.as_u16(),
            body: super::cut(body.trim()),
        })
    }

    /// A failed request or read: the timeout error when `--timeout` has
    /// expired (each request's global limit ends with it), else the
    /// network error.
    fn network(&self, source: std::io::Error) -> RegistryError {
        let now = Instant::now() + DEADLINE_SLACK;
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return self.timed_out();
        }
        RegistryError::Network {
            registry: self.reference.registry.clone(),
            source,
        }
    }
}

/// Whether the token realm `realm` may be asked over plain HTTP: an
/// `http://` URL whose own host is loopback or named insecure (the rule
/// of [`super::is_insecure`]), whatever the registry's host is.
fn realm_is_insecure(realm: &str, named: &[String]) -> bool {
    realm.starts_with("http://")
        && realm
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.authority().cloned())
            .filter(|authority| !authority.as_str().contains('@'))
            .is_some_and(|authority| {
                super::host_is_insecure(authority.host(), authority.as_str(), named)
            })
}

/// A timer may fire this much before the deadline it was set for.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// How long a request whose body is at most `size` bytes may take in all:
/// [`NETWORK_WAIT`] twice plus the body at [`MIN_RATE`], and no later
/// than `deadline`; `None` when the deadline has passed.
fn request_limit(size: u64, deadline: Option<Instant>, now: Instant) -> Option<Duration> {
    let bound = (NETWORK_WAIT * 2).saturating_add(Duration::from_secs(size / MIN_RATE));
    match deadline {
        None => Some(bound),
        Some(deadline) => deadline
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
            .map(|left| left.min(bound)),
    }
}

fn basic(credentials: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", credentials.user, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(4096).collect())
}

fn is_connection_error(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Tls(_)
            | ureq::Error::Rustls(_)
            | ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    )
}

fn ureq_to_io(e: ureq::Error) -> std::io::Error {
    match e {
        ureq::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

enum Capped {
    TooLarge,
    Io(std::io::Error),
}

/// The whole body, refused past `limit` bytes without reading further.
fn read_capped(body: impl Read, limit: u64) -> Result<Vec<u8>, Capped> {
    let mut out = Vec::new();
    body.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(Capped::Io)?;
    if out.len() as u64 > limit {
        return Err(Capped::TooLarge);
    }
    Ok(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `WWW-Authenticate` challenge: its scheme, lowercased, and its
/// parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// Parses `Scheme k="v", k2=v2` (RFC 7235; quoted strings may hold
    /// commas and `\` escapes).
    fn parse(text: &str) -> Challenge {
        let text = text.trim();
        let (scheme, mut rest) = match text.split_once(' ') {
            Some((s, r)) => (s, r),
            None => (text, ""),
        };
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some(eq) = rest.find('=') else { break };
            let key = rest[..eq].trim().to_ascii_lowercase();
            rest = &rest[eq + 1..];
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                out.push(next);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => out.push(c),
                    }
                }
                value = out;
                rest = &quoted[end.min(quoted.len())..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_string();
                rest = &rest[end..];
            }
            params.push((key, value));
        }
        Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        }
    }

    fn param(&self, key: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::BufRead as _;
    use std::net::TcpListener;

    /// What the fake registry answers: status, extra headers, body.
    type Answer = (u16, Vec<(String, String)>, Vec<u8>);

    /// A registry on 127.0.0.1 that answers each request (its first line
    /// and headers) with `handler`, one connection at a time, and closes
    /// anything that is not plain HTTP (the client's TLS try).
    fn fake_registry(
        handler: impl Fn(&str, &[String], u16) -> Answer + Send + 'static,
    ) -> Reference {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() || !first.starts_with("GET ") {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    headers.push(line.trim_end().to_ascii_lowercase());
                }
                let (status, extra, body) = handler(first.trim_end(), &headers, port);
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in extra {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let mut out = &stream;
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body);
            }
        });
        Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap()
    }

    #[test]
    fn the_anonymous_bearer_token_flow_is_followed() {
        let reference = fake_registry(|line, headers, port| {
            if line.starts_with("GET /token?") {
                assert!(line.contains("scope=repository%3Aapp%3Apull"), "{line}");
                assert!(line.contains("service=fake"), "{line}");
                assert!(!headers.iter().any(|h| h.starts_with("authorization")));
                return (200, vec![], br#"{"token": "t0k3n"}"#.to_vec());
            }
            if headers.iter().any(|h| h == "authorization: bearer t0k3n") {
                return (200, vec![], br#"{"schemaVersion": 2}"#.to_vec());
            }
            let challenge = format!(
                "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",\
                 scope=\"repository:app:pull\""
            );
            (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
        });
        let mut client = Client::new(&reference, &[], None);
        let manifest = client.manifest("1").unwrap();
        assert_eq!(manifest.bytes, br#"{"schemaVersion": 2}"#);
        assert_eq!(client.authorization.as_deref(), Some("Bearer t0k3n"));
    }

    #[test]
    fn a_realm_without_anonymous_tokens_gets_the_users_credentials() {
        let reference = fake_registry(|line, headers, port| {
            // base64("u:p")
            let basic = headers.iter().any(|h| h == "authorization: basic dtpw");
            if line.starts_with("GET /token?") {
                return match basic {
                    true => (200, vec![], br#"{"access_token": "fromlogin"}"#.to_vec()),
                    false => (401, vec![], vec![]),
                };
            }
            if headers
                .iter()
                .any(|h| h == "authorization: bearer fromlogin")
            {
                return (200, vec![], b"{}".to_vec());
            }
            let challenge = format!("Bearer realm=\"http://127.0.0.1:{port}/token\"");
            (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
        });
        let mut client = logged_in(&reference);
        assert_eq!(client.manifest("1").unwrap().bytes, b"{}");
    }

    #[test]
    fn an_expired_token_is_replaced_without_credentials() {
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        let reference = fake_registry(move |line, headers, port| {
            use std::sync::atomic::Ordering;
            if line.starts_with("GET /token?") {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                return (200, vec![], format!(r#"{{"token": "t{n}"}}"#).into_bytes());
            }
            // Only the latest token is good: each earlier one has expired.
            let latest = format!(
                "authorization: bearer t{}",
                counter.load(Ordering::SeqCst).saturating_sub(1)
            );
            if counter.load(Ordering::SeqCst) > 0 && headers.contains(&latest) {
                return (200, vec![], b"{}".to_vec());
            }
            let challenge = format!("Bearer realm=\"http://127.0.0.1:{port}/token\"");
            (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
        });
        let mut client = Client::new(&reference, &[], None);
        client.search = Some(auth::Search::default());
        client.manifest("1").unwrap();
        // The token expires: the next request gets a new anonymous one.
        issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        client.manifest("1").unwrap();
        assert!(!client.use_credentials);
    }

    #[test]
    fn a_registry_that_keeps_refusing_ends_in_one_auth_error() {
        let reference = fake_registry(|_, _, _| {
            let challenge = "Basic realm=\"r\"".to_string();
            (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
        });
        let mut client = Client::new(&reference, &[], None);
        client.search = Some(auth::Search::default());
        let err = client.manifest("1").unwrap_err().to_string();
        assert!(err.contains("requires a login (401)"), "{err}");
    }

    #[test]
    fn whatever_a_registry_sends_memory_stays_bounded() {
        let reference = fake_registry(|line, _, _| {
            if line.contains("/manifests/huge") {
                return (200, vec![], vec![b' '; (MAX_MANIFEST + 10) as usize]);
            }
            if line.contains("/manifests/limited") {
                return (429, vec![("Retry-After".into(), "60".into())], vec![]);
            }
            if line.contains("/manifests/gone") {
                return (500, vec![], vec![b'e'; 1 << 20]);
            }
            if line.contains("/blobs/") {
                return (200, vec![], b"0123456789".to_vec());
            }
            (404, vec![], vec![])
        });
        let mut client = Client::new(&reference, &[], None);
        let err = client.manifest("huge").unwrap_err();
        assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
        let err = client.manifest("limited").unwrap_err().to_string();
        assert!(
            err.contains("429") && err.contains("retry after 60"),
            "{err}"
        );
        let err = client.manifest("gone").unwrap_err().to_string();
        assert!(
            err.contains("answered 500") && err.len() < 2000,
            "{}",
            err.len()
        );
        let err = client.manifest("missing").unwrap_err().to_string();
        assert!(err.contains("404"), "{err}");

        let digest = format!("sha256:{}", hex(&Sha256::digest(b"01234")));
        let mut out = Vec::new();
        let err = client.blob(&digest, 5, &mut out, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("more than 5"), "{err}");
        assert!(out.len() <= 5, "nothing past the descriptor's size is kept");
        let ten = format!("sha256:{}", hex(&Sha256::digest(b"0123456789")));
        let mut out = Vec::new();
        client.blob(&ten, 10, &mut out, &mut |_| {}).unwrap();
        assert_eq!(out, b"0123456789");
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = client
            .blob(&wrong, 10, &mut Vec::new(), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, RegistryError::WrongDigest { .. }), "{err}");
    }

    /// A client for `reference` that has found the credentials `u`:`p`.
    fn logged_in(reference: &Reference) -> Client {
        let mut client = Client::new(reference, &[], None);
        client.search = Some(auth::Search {
            found: Some(Credentials {
                user: "u".into(),
                password: "p".into(),
                source: "/test/auth.json".into(),
            }),
            ..auth::Search::default()
        });
        client
    }

    fn port_of(reference: &Reference) -> u16 {
        reference
            .registry
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap()
    }

    #[test]
    fn a_loopback_registry_cannot_send_credentials_to_a_plain_http_realm_elsewhere() {
        let reference = fake_registry(|_, _, _| {
            let challenge = "Bearer realm=\"http://auth.example/token\"".to_string();
            (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
        });
        let mut client = logged_in(&reference);
        let err = client.manifest("1").unwrap_err();
        assert!(
            matches!(&err, RegistryError::Protocol { detail, .. } if detail.contains("not an https URL")),
            "{err}"
        );
        // The realm's own host decides: loopback, or named.
        assert!(!realm_is_insecure("http://auth.example/token", &[]));
        assert!(realm_is_insecure(
            "http://auth.example/token",
            &["auth.example".into()]
        ));
        assert!(realm_is_insecure("http://localhost:5001/token", &[]));
        assert!(realm_is_insecure("http://127.0.0.1:5001/token", &[]));
        assert!(realm_is_insecure("http://[::1]:5001/token", &[]));
        assert!(!realm_is_insecure("http://127.0.0.1@evil.example/t", &[]));
        assert!(!realm_is_insecure("https://127.0.0.1/token", &[]));
    }

    #[test]
    fn only_an_insecure_registry_gets_an_agent_that_speaks_plain_http() {
        let reference = fake_registry(|_, _, _| (200, vec![], b"{}".to_vec()));
        let port = port_of(&reference);
        let url = format!("http://127.0.0.1:{port}/v2/");
        let secure = Client::new(&Reference::parse("ghcr.io/a/b:1").unwrap(), &[], None);
        let err = secure.agent.get(&url).call().unwrap_err();
        assert!(matches!(err, ureq::Error::RequireHttpsOnly(_)), "{err}");
        let loopback = Client::new(&reference, &[], None);
        assert_eq!(loopback.agent.get(&url).call().unwrap().status(), 200);
    }

    #[test]
    fn a_redirected_blob_does_not_carry_the_registrys_token() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let cdn_seen = seen.clone();
        let cdn = fake_registry(move |line, headers, _| {
            cdn_seen
                .lock()
                .unwrap()
                .push((line.to_string(), headers.to_vec()));
            (200, vec![], b"blob".to_vec())
        });
        let cdn_port = port_of(&cdn);
        let reference = fake_registry(move |line, headers, port| {
            if line.starts_with("GET /token?") {
                return (200, vec![], br#"{"token": "s3cret"}"#.to_vec());
            }
            if headers.iter().any(|h| h == "authorization: bearer s3cret") {
                let location = format!("http://127.0.0.1:{cdn_port}/cdn/blob");
                return (307, vec![("Location".into(), location)], vec![]);
            }
            let challenge = format!("Bearer realm=\"http://127.0.0.1:{port}/token\"");
            (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
        });
        let mut client = Client::new(&reference, &[], None);
        let digest = format!("sha256:{}", hex(&Sha256::digest(b"blob")));
        let mut out = Vec::new();
        client.blob(&digest, 4, &mut out, &mut |_| {}).unwrap();
        assert_eq!(out, b"blob");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].0.starts_with("GET /cdn/blob"), "{seen:?}");
        assert!(
            !seen[0].1.iter().any(|h| h.starts_with("authorization")),
            "{seen:?}"
        );
    }

    #[test]
    fn a_trickling_registry_cannot_outlast_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickling = answered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let mut input = &stream;
                // The HTTPS try (a TLS hello) is closed at once: plain
                // HTTP follows, and it is the body that trickles.
                while !request.windows(4).any(|w| w == b"\r\n\r\n")
                    && b"GET ".starts_with(&request[..request.len().min(4)])
                {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if !request.starts_with(b"GET ") {
                    continue;
                }
                let mut out = &stream;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n";
                if out.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                trickling.store(true, std::sync::atomic::Ordering::SeqCst);
                // Headers at once, then the body a byte at a time.
                for _ in 0..60 {
                    std::thread::sleep(Duration::from_millis(200));
                    if out.write_all(b" ").is_err() {
                        break;
                    }
                }
            }
        });
        let reference = Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap();
        let started = Instant::now();
        let mut client = Client::new(&reference, &[], Some(started + Duration::from_millis(1500)));
        let err = client.manifest("1").unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(
            answered.load(std::sync::atomic::Ordering::SeqCst),
            "the headers came and the body trickled"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // Past the deadline, no request starts.
        let err = client.manifest("1").unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }

    #[test]
    fn every_request_has_a_whole_bound_and_ends_by_the_deadline() {
        let now = Instant::now();
        let small = request_limit(1000, None, now).unwrap();
        assert_eq!(small, NETWORK_WAIT * 2);
        let big = request_limit(1 << 30, None, now).unwrap();
        assert_eq!(
            big,
            NETWORK_WAIT * 2 + Duration::from_secs((1 << 30) / MIN_RATE)
        );
        let soon = now + Duration::from_secs(3);
        assert_eq!(
            request_limit(1 << 30, Some(soon), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(request_limit(1, Some(now), now), None);
    }

    #[test]
    fn bearer_challenges_are_parsed_with_quoted_commas_and_escapes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(
            c.param("realm").as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(c.param("service").as_deref(), Some("registry.docker.io"));
        assert_eq!(
            c.param("scope").as_deref(),
            Some("repository:library/alpine:pull,push")
        );
        let c = Challenge::parse(r#"Basic realm="a \"b\"", charset=UTF-8"#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm").as_deref(), Some("a \"b\""));
        assert_eq!(c.param("charset").as_deref(), Some("UTF-8"));
        let c = Challenge::parse(r#"Bearer realm="unterminated"#);
        assert_eq!(c.param("realm").as_deref(), Some("unterminated"));
        assert_eq!(Challenge::parse("").params, []);
    }
}
