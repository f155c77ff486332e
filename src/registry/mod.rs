//! Images straight from a registry: `microrun alpine:3.20 -- cmd`,
//! `microrun pull REF`, `microrun images [--prune]`.
//!
//! A ROOTFS that is not an existing path (nor skopeo's `PATH:TAG` of one)
//! and parses as a reference ([`reference`]), or any `docker://REF`, is
//! pulled over the OCI distribution spec ([`client`]) into the cache's
//! content-addressed blob store ([`store`]), an OCI layout that the image
//! conversion (`initrd_tools::image`) reads like any other. Tags resolve to
//! a digest that is stored; `--pull missing` (the default) asks the
//! registry only when the name has no complete image in the store, so a
//! cached image runs with no network at all. This module lives in the
//! binary's crate, not in `initrd-tools`: that crate reads files, this one
//! talks to the network, and only microrun's command line needs it.

pub mod auth;
pub mod client;
pub mod progress;
pub mod reference;
pub mod store;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use initrd_tools::image::{Image, ImageError};
use serde_json::Value;

use crate::plan::root::{self as plan_root, RootKind};
use crate::spec::{RootChoice, Rootfs, Verbosity};
use client::Client;
use progress::{human_size, Progress};
use reference::Reference;
use store::{BlobStore, Record};

/// The environment variable that lists more hosts that may be reached over
/// plain HTTP (comma-separated), as `--insecure-registry` does.
pub const INSECURE_ENV: &str = "MICRORUN_INSECURE_REGISTRIES";

/// The most layers an image may have (docker's limit is 127).
const MAX_LAYERS: usize = 256;
/// The most a config blob may take.
const MAX_CONFIG: u64 = 16 << 20;

/// Errors of pulling and listing images.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error(
        "{reference} is not an image reference: {why} (write NAME[:TAG], NAME@sha256:DIGEST or \
         HOST[:PORT]/NAME[:TAG], as docker does; for a file or directory, give its path)"
    )]
    BadReference {
        /// The text, quoted.
        reference: String,
        /// What is wrong.
        why: String,
    },
    /// `--pull never` and the image is not in the cache.
    #[error("{reference} is not in the cache and --pull never forbids pulling it: run `microrun pull {reference}` with a network first, or use --pull missing")]
    NotCached {
        /// The reference.
        reference: String,
    },
    /// 404 on the manifest.
    #[error(
        "{reference}: the registry has no such image or tag (404): check the name and the tag \
         (`skopeo list-tags docker://{name}` lists the tags)"
    )]
    NotFound {
        /// The reference.
        reference: String,
        /// The name without tag.
        name: String,
    },
    /// ROOTFS named no file or directory, was taken for an image
    /// reference, and the pull failed: both readings in one message.
    #[error(
        "{text} is no file or directory here, so it was taken as an image reference: {source}"
    )]
    NotAPath {
        /// The ROOTFS text, quoted.
        text: String,
        /// Why the pull failed.
        source: Box<RegistryError>,
    },
    /// 404 on a blob the manifest names.
    #[error("{reference}: the registry lacks the blob {digest} its manifest names (404): the image is incomplete in the registry; push it again")]
    BlobNotFound {
        /// The reference.
        reference: String,
        /// The blob.
        digest: String,
    },
    /// 401 after the anonymous try and the user's credentials.
    #[error("{reference}: {registry} requires a login (401); {read}: log in with `podman login {registry}`, `skopeo login {registry}` or `docker login {registry}` (or point $REGISTRY_AUTH_FILE at an auth.json)")]
    AuthRequired {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// Which credential files were read, and what they gave.
        read: String,
    },
    /// 403.
    #[error("{reference}: the registry denied access (403): the account has no pull access to this repository; check the name, or log in as a user who has")]
    Denied {
        /// The reference.
        reference: String,
    },
    /// 429.
    #[error("{registry} refused the pull: too many requests (429){}; Docker Hub limits anonymous pulls per IP address (100 per 6 hours when this was written): log in (`podman login docker.io`) for a higher limit, wait, or use a mirror", retry_after.as_ref().map(|r| format!(", retry after {r} s")).unwrap_or_default())]
    RateLimited {
        /// The registry.
        registry: String,
        /// Its `Retry-After`.
        retry_after: Option<String>,
    },
    /// Another status.
    #[error("{registry} answered {status} for {what}: {body}")]
    Status {
        /// The registry.
        registry: String,
        /// What was asked for.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Its body, cut.
        body: String,
    },
    /// No connection, a timeout, a TLS failure.
    #[error("cannot reach {registry}: {source}: check the network (and a proxy: $https_proxy); an image already pulled runs offline with --pull missing or never; a registry on plain HTTP needs --insecure-registry HOST")]
    Network {
        /// The registry.
        registry: String,
        /// Why.
        source: io::Error,
    },
    /// A blob or manifest does not have the digest that names it.
    #[error("{registry} served {what} with the digest {actual}, but it should be {expected}: the registry's copy is corrupt or it was tampered with; nothing was kept. Tell the registry's owner, or pull by another tag or digest")]
    WrongDigest {
        /// The registry.
        registry: String,
        /// Which.
        what: String,
        /// The digest that names it.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// A blob is not as long as its descriptor says.
    #[error("{registry} served {actual} bytes for the blob {digest}, whose descriptor says {expected}: the registry's copy is corrupt; nothing was kept")]
    WrongSize {
        /// The registry.
        registry: String,
        /// The blob.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// What came.
        actual: String,
    },
    /// A manifest names a blob whose digest is right but whose size is not.
    #[error("{image}: its manifest says the blob {digest} has {expected} bytes, but the blob with that digest has {actual}: the manifest is wrong (the cached blob is intact and was kept); push the image again with a correct manifest, or tell its owner")]
    WrongDescriptorSize {
        /// The image whose manifest gave the size.
        image: String,
        /// The blob.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// The blob's size.
        actual: u64,
    },
    /// A response over its cap.
    #[error(
        "{registry} sent {what} larger than {limit} bytes: that is not image metadata; refused"
    )]
    TooLarge {
        /// The registry.
        registry: String,
        /// What.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// The registry broke the protocol.
    #[error("{registry}: {detail}")]
    Protocol {
        /// The registry.
        registry: String,
        /// What is wrong.
        detail: String,
    },
    /// No linux/amd64 image.
    #[error(
        "{reference} has no linux/amd64 image (microrun runs x86-64 guests); it has: {available}"
    )]
    NoPlatform {
        /// The reference.
        reference: String,
        /// Its platforms.
        available: String,
    },
    /// A manifest or layer microrun cannot read.
    #[error("{reference}: {what} has the media type {media_type}, which microrun cannot read ({accepted})")]
    Unsupported {
        /// The reference.
        reference: String,
        /// Which part.
        what: String,
        /// Its media type.
        media_type: String,
        /// What is read instead.
        accepted: &'static str,
    },
    /// `--timeout` expired while pulling (microrun exits 124).
    #[error("--timeout expired while pulling {reference}; nothing partial was kept (raise --timeout, or pull first with `microrun pull {reference}` so that the run starts from the cache)")]
    TimedOut {
        /// The reference.
        reference: String,
    },
    /// The store could not be written or read.
    #[error(
        "the image cache: cannot use {what}: {source} (set XDG_CACHE_HOME to a writable directory)"
    )]
    Store {
        /// Which file.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// `images --prune` while a pull or a run uses the store.
    #[error("{}: a pull or a run is using the image store; run `microrun images --prune` again when it has finished", store.display())]
    Busy {
        /// The store.
        store: std::path::PathBuf,
    },
    /// The image, pulled, does not open or convert.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The cache directory.
    #[error(transparent)]
    Initrd(#[from] initrd_tools::InitrdError),
}

impl RegistryError {
    /// Whether `--timeout` ended the pull (the run then exits 124, not 125).
    pub fn is_timeout(&self) -> bool {
        match self {
            RegistryError::TimedOut { .. } => true,
            RegistryError::NotAPath { source, .. } => source.is_timeout(),
            _ => false,
        }
    }
}

/// When the registry is asked (docker's `--pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when the image is not in the cache.
    #[default]
    Missing,
    /// Every time: the tag is resolved again, blobs already there are kept.
    Always,
    /// Never: the image must be in the cache.
    Never,
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `--pull`.
    pub policy: PullPolicy,
    /// `--insecure-registry` hosts (and `MICRORUN_INSECURE_REGISTRIES`).
    pub insecure: Vec<String>,
    /// `-q`, `-v`.
    pub verbosity: Verbosity,
    /// Convert a cached image into its initrd archive while the store is
    /// at hand, so that a cached blob that no longer matches its digest
    /// is fetched again rather than failing the run later. Off for
    /// `microrun pull`; skipped too where the plan boots the image from
    /// the disk root (see `root`).
    pub convert: bool,
    /// `--root`: with the disk root, given or chosen by size as
    /// `plan::root::choose` does, no newc archive is made (the EROFS
    /// conversion checks every blob too, and the archive would go unused).
    pub root: Option<RootChoice>,
    /// When `--timeout` expires, counted from microrun's start
    /// (`vmm::deadline_after`): every request ends by then, and the pull
    /// stops between blobs and after the conversion.
    pub deadline: Option<Instant>,
}

impl PullOptions {
    /// The timeout error once the deadline has passed.
    fn check_deadline(&self, reference: &Reference) -> Result<(), RegistryError> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(RegistryError::TimedOut {
                reference: reference.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// What ROOTFS names: a path as [`Rootfs::detect`] reads it, or an image
/// reference that is pulled (as `--pull` says) and opened. The time spent
/// pulling comes back for `--timings`.
pub fn resolve_rootfs(
    arg: &Path,
    options: &PullOptions,
) -> Result<(Rootfs, Option<Duration>), RegistryError> {
    let text = arg.to_str();
    if let Some(text) = text.filter(|t| t.starts_with("docker://")) {
        let reference = Reference::parse(text)?;
        return image(&reference, options, None).map(|(i, t)| (Rootfs::Image(i), t));
    }
    match Rootfs::detect(arg) {
        Err(ImageError::Read { path, source })
            if path == arg && source.kind() == io::ErrorKind::NotFound =>
        {
            match text.map(Reference::parse) {
                Some(Ok(reference)) => {
                    image(&reference, options, text).map(|(i, t)| (Rootfs::Image(i), t))
                }
                _ => Err(ImageError::Read { path, source }.into()),
            }
        }
        other => Ok((other?, None)),
    }
}

/// The image `reference` names, from the store or pulled as `options`
/// say, and with `options.convert` its archive converted (or found) in the
/// cache. `path_text` is the ROOTFS text when it could have been a path.
pub fn image(
    reference: &Reference,
    options: &PullOptions,
    path_text: Option<&str>,
) -> Result<(Box<Image>, Option<Duration>), RegistryError> {
    fetch(
        reference,
        options,
        path_text,
        options.convert.then_some(options.root),
    )
}

/// [`image`], converting only when `convert` is the run's `--root` (a
/// `microrun pull` does not: every blob it fetched was checked as it
/// streamed).
fn fetch(
    reference: &Reference,
    options: &PullOptions,
    path_text: Option<&str>,
    convert: Option<Option<RootChoice>>,
) -> Result<(Box<Image>, Option<Duration>), RegistryError> {
    let store = BlobStore::open(&initrd_tools::cache_dir()?)?;
    let _lock = store.lock(false)?;
    let name = record_name(reference);
    if options.policy != PullPolicy::Always {
        if let Some(record) = store.record(&name) {
            match open_stored(&store, &record, reference, convert) {
                Ok(image) => {
                    log::info!("{reference}: from the cache, {}", record.digest);
                    store.touch(&name);
                    options.check_deadline(reference)?;
                    return Ok((image, None));
                }
                Err(e) => log::info!("{reference}: the cached image is incomplete ({e})"),
            }
        }
        if options.policy == PullPolicy::Never {
            return Err(not_a_path(
                path_text,
                RegistryError::NotCached {
                    reference: reference.to_string(),
                },
            ));
        }
    }
    let started = Instant::now();
    let record = pull_into(&store, reference, options).map_err(|e| not_a_path(path_text, e))?;
    let image = open_stored(&store, &record, reference, convert)?;
    options.check_deadline(reference)?;
    Ok((image, Some(started.elapsed())))
}

/// `error`, saying first that `path_text` (ROOTFS, when it could have
/// been a path) is none.
fn not_a_path(path_text: Option<&str>, error: RegistryError) -> RegistryError {
    match path_text {
        Some(text) => RegistryError::NotAPath {
            text: shown(text),
            source: Box::new(error),
        },
        None => error,
    }
}

/// `microrun pull REF`: pulls (as `--pull always` would, unless `policy`
/// says otherwise) and returns the reference pinned to the digest it
/// resolved to (`NAME[:TAG]@sha256:...`, which docker and microrun accept),
/// for a CI step to pin the image by.
pub fn pull(text: &str, options: &PullOptions) -> Result<String, RegistryError> {
    let reference = Reference::parse(text)?;
    let mut options = options.clone();
    if options.policy == PullPolicy::Missing {
        options.policy = PullPolicy::Always;
    }
    let (image, took) = fetch(&reference, &options, None, None)?;
    log::info!(
        "{reference}: {}{}",
        image.description(),
        took.map(|t| format!(", pulled in {:.1} s", t.as_secs_f64()))
            .unwrap_or_default()
    );
    let store = BlobStore::open(&initrd_tools::cache_dir()?)?;
    let digest = match store.record(&record_name(&reference)) {
        Some(record) => record.digest,
        None => reference.digest.clone().unwrap_or_default(),
    };
    let mut pinned = reference.name();
    if let Some(tag) = &reference.tag {
        pinned.push(':');
        pinned.push_str(tag);
    }
    Ok(format!("{pinned}@{digest}"))
}

/// `microrun images`: one line per name (name, digest, size, last used),
/// with a header.
pub fn list() -> Result<String, RegistryError> {
    let store = BlobStore::open(&initrd_tools::cache_dir()?)?;
    let _lock = store.lock(false)?;
    let mut out = format!(
        "{:<48} {:<19} {:>10}  {}\n",
        "NAME", "DIGEST", "SIZE", "LAST USED"
    );
    let now = SystemTime::now();
    for record in store.records() {
        let size: u64 = store.blobs_of(&record).iter().map(|(_, s)| s).sum();
        let used = record
            .used
            .and_then(|u| now.duration_since(u).ok())
            .map(ago)
            .unwrap_or_else(|| "-".into());
        let short = record.digest.get(..19).unwrap_or(&record.digest);
        out.push_str(&format!(
            "{:<48} {short:<19} {:>10}  {used}\n",
            record.name,
            human_size(size)
        ));
    }
    Ok(out)
}

/// `microrun images --prune`: removes every blob no name keeps.
pub fn prune() -> Result<String, RegistryError> {
    let store = BlobStore::open(&initrd_tools::cache_dir()?)?;
    let (count, bytes) = store.prune()?;
    Ok(format!(
        "removed {count} blob{} ({})",
        if count == 1 { "" } else { "s" },
        human_size(bytes)
    ))
}

/// How long ago, in the largest whole unit.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// The record's name: the tag's, or the digest's (so a pull by digest
/// never moves a tag).
fn record_name(reference: &Reference) -> String {
    match (&reference.digest, &reference.tag) {
        (Some(digest), _) => format!("{}@{digest}", reference.name()),
        (None, Some(tag)) => format!("{}:{tag}", reference.name()),
        (None, None) => format!("{}:latest", reference.name()),
    }
}

/// The stored image of `record`, opened, and with `convert` (the run's
/// `--root`) its archive converted (or found) in the cache, unless the
/// plan boots it from the disk root. A blob that does not match its
/// digest is removed, so the next pull fetches it again.
fn open_stored(
    store: &BlobStore,
    record: &Record,
    reference: &Reference,
    convert: Option<Option<RootChoice>>,
) -> Result<Box<Image>, RegistryError> {
    let name = if record.digest == record.manifest {
        reference.to_string()
    } else {
        format!("{reference} (index {})", record.digest)
    };
    let image = initrd_tools::image::open_layout_manifest(store.root(), &record.manifest, &name)?;
    let Some(root) = convert else {
        return Ok(Box::new(image));
    };
    if boots_from_disk(&image, root) {
        log::info!("{reference}: boots from the disk root; no initrd archive is made");
        return Ok(Box::new(image));
    }
    if let Err(e) = image.cached_convert() {
        if matches!(
            e,
            ImageError::DigestMismatch { .. }
                | ImageError::SizeMismatch { .. }
                | ImageError::Layer { .. }
        ) {
            for (digest, size) in store.blobs_of(record) {
                let _ = store.has_verified(&digest, size, &name);
            }
        }
        return Err(e.into());
    }
    Ok(Box::new(image))
}

/// Whether a VM run with `root` (`--root`) boots `image` from the disk
/// root: `plan::root::choose`'s answer, on the same estimate. The engine
/// is not known yet; the chroot engine, which takes the initrd, converts
/// the image itself when it needs the archive.
fn boots_from_disk(image: &Image, root: Option<RootChoice>) -> bool {
    let rootfs = Rootfs::Image(Box::new(image.clone()));
    let estimate = || plan_root::unpacked_estimate(&rootfs);
    matches!(
        plan_root::choose(root, &rootfs, true, false, estimate),
        Ok(RootKind::Disk)
    )
}

/// Pulls `reference` into the store and records its name.
fn pull_into(
    store: &BlobStore,
    reference: &Reference,
    options: &PullOptions,
) -> Result<Record, RegistryError> {
    let mut client = Client::new(reference, &options.insecure, options.deadline);
    let progress = Progress::new(options.verbosity);
    let top = client.manifest(reference.manifest_reference())?;
    log::info!("{reference}: resolved to {}", top.digest);
    store.put(&top.digest, &top.bytes)?;
    let top_json = parse_json(&top.bytes, reference, "its manifest")?;
    let manifest_digest = if is_index(&top_json, &top.media_type) {
        let chosen = choose_platform(&top_json, reference)?;
        if store.read_verified(&chosen, client::MAX_MANIFEST).is_none() {
            let manifest = client.manifest(&chosen)?;
            store.put(&manifest.digest, &manifest.bytes)?;
        }
        chosen
    } else {
        top.digest.clone()
    };
    let manifest_bytes = store
        .read_verified(&manifest_digest, client::MAX_MANIFEST)
        .ok_or_else(|| RegistryError::Protocol {
            registry: reference.registry.clone(),
            detail: format!("the manifest {manifest_digest} vanished from the store"),
        })?;
    let manifest = parse_json(&manifest_bytes, reference, "its manifest")?;
    check_manifest(&manifest, reference)?;
    let config = descriptor(manifest.get("config"), reference, "its config")?;
    if config.1 > MAX_CONFIG {
        return Err(RegistryError::TooLarge {
            registry: reference.registry.clone(),
            what: "a config".into(),
            limit: MAX_CONFIG,
        });
    }
    let layers: Vec<(String, u64, String)> = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|layers| {
            layers
                .iter()
                .map(|l| {
                    let (digest, size) = descriptor(Some(l), reference, "a layer")?;
                    let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
                    Ok((digest, size, media.to_string()))
                })
                .collect::<Result<_, RegistryError>>()
        })
        .transpose()?
        .unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(RegistryError::Protocol {
            registry: reference.registry.clone(),
            detail: format!(
                "{reference} has {} layers, more than the {MAX_LAYERS} microrun accepts",
                layers.len()
            ),
        });
    }
    for (digest, _, media) in &layers {
        if !is_readable_layer(media) {
            return Err(RegistryError::Unsupported {
                reference: reference.to_string(),
                what: format!("the layer {digest}"),
                media_type: shown(media),
                accepted: "tar layers, plain or gzip, zstd, xz or bzip2 compressed; a foreign or \
                           non-distributable layer must be fetched by its own tools",
            });
        }
    }
    let blobs = std::iter::once((config.0.clone(), config.1, "config".to_string())).chain(
        layers
            .iter()
            .map(|(d, s, _)| (d.clone(), *s, "layer".to_string())),
    );
    for (digest, size, kind) in blobs {
        options.check_deadline(reference)?;
        if store.has_verified(&digest, size, &reference.to_string())? {
            log::info!("{reference}: {kind} {digest} is already in the cache");
            continue;
        }
        let short = format!("{kind} {}", digest.get(7..19).unwrap_or(&digest));
        let mut bar = if kind == "layer" {
            Some(progress.blob(&short, size))
        } else {
            None
        };
        store.write_blob(&digest, |out| {
            client.blob(&digest, size, out, &mut |n| {
                if let Some(bar) = bar.as_mut() {
                    bar.advance(n)
                }
            })
        })?;
        if let Some(bar) = bar {
            bar.done();
        }
    }
    let record = Record {
        name: record_name(reference),
        digest: top.digest.clone(),
        manifest: manifest_digest,
        used: None,
    };
    store.save(&record)?;
    progress.say(&format!("{reference}: pulled {}", top.digest));
    Ok(record)
}

/// Whether `reference`'s registry may be reached over plain HTTP:
/// `localhost`, `127.0.0.0/8`, `::1`, or a host the user named.
pub fn is_insecure(reference: &Reference, named: &[String]) -> bool {
    host_is_insecure(reference.host_name(), &reference.registry, named)
}

/// [`is_insecure`] for any `host` (`authority` is `host[:port]`), such as
/// a token realm's.
pub fn host_is_insecure(host: &str, authority: &str, named: &[String]) -> bool {
    let loopback = host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    let from_env = std::env::var(INSECURE_ENV).unwrap_or_default();
    let mut hosts = named
        .iter()
        .map(String::as_str)
        .chain(from_env.split(',').map(str::trim))
        .filter(|h| !h.is_empty());
    loopback || hosts.any(|h| h == host || h == authority)
}

fn parse_json(bytes: &[u8], reference: &Reference, what: &str) -> Result<Value, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Protocol {
        registry: reference.registry.clone(),
        detail: format!("{what} for {reference} is not JSON: {e}"),
    })
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn is_index(json: &Value, content_type: &str) -> bool {
    let media = json
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(content_type);
    media.starts_with(OCI_INDEX)
        || media.starts_with(DOCKER_LIST)
        || (json.get("manifests").is_some() && json.get("layers").is_none())
}

/// The linux/amd64 entry of an index; the error lists the others.
fn choose_platform(index: &Value, reference: &Reference) -> Result<String, RegistryError> {
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut available = Vec::new();
    for entry in entries {
        let platform = entry.get("platform");
        let field = |k: &str| {
            platform
                .and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let (os, arch, variant) = (field("os"), field("architecture"), field("variant"));
        if os == "linux" && arch == "amd64" {
            return descriptor(Some(entry), reference, "an index entry").map(|(d, _)| d);
        }
        if os == "unknown" {
            continue; // BuildKit's attestation manifests.
        }
        let mut name = format!("{os}/{arch}");
        if !variant.is_empty() {
            name.push('/');
            name.push_str(variant);
        }
        if !available.contains(&name) {
            available.push(name);
        }
    }
    Err(RegistryError::NoPlatform {
        reference: reference.to_string(),
        available: if available.is_empty() {
            "no platform at all".into()
        } else {
            cut(&available.join(", "))
        },
    })
}

/// A descriptor's digest and size.
fn descriptor(
    value: Option<&Value>,
    reference: &Reference,
    what: &str,
) -> Result<(String, u64), RegistryError> {
    let bad = |detail: &str| RegistryError::Protocol {
        registry: reference.registry.clone(),
        detail: format!("{what} of {reference} {detail}"),
    };
    let value = value.ok_or_else(|| bad("is missing"))?;
    let digest = value
        .get("digest")
        .and_then(Value::as_str)
        .filter(|d| is_digest(d))
        .ok_or_else(|| bad("has no sha256 digest (sha256:<64 hex digits>)"))?;
    let size = value
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("has no size"))?;
    Ok((digest.to_string(), size))
}

/// Refuses what microrun cannot read: schema 1 and anything that is not an
/// image manifest.
fn check_manifest(manifest: &Value, reference: &Reference) -> Result<(), RegistryError> {
    if manifest.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            what: "its manifest".into(),
            media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
            accepted: "OCI and Docker schema 2 manifests; push the image again with a current tool",
        });
    }
    let media = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or("application/vnd.oci.image.manifest.v1+json");
    if media != "application/vnd.oci.image.manifest.v1+json"
        && media != "application/vnd.docker.distribution.manifest.v2+json"
    {
        return Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            what: "its manifest".into(),
            media_type: shown(media),
            accepted: "OCI and Docker schema 2 image manifests and indexes",
        });
    }
    Ok(())
}

/// Whether a layer's media type is a tar microrun reads.
fn is_readable_layer(media: &str) -> bool {
    matches!(
        media,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | ""
    )
}

/// `sha256:<64 lowercase hex>`.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Text from the command line or a registry for a message: quoted, at most
/// 200 bytes (as the image reader quotes names from an image).
pub fn shown(text: &str) -> String {
    initrd_tools::image::quote(text.as_bytes())
}

/// Text from a registry for a message: at most 1000 bytes.
pub fn cut(text: &str) -> String {
    initrd_tools::image::cut(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alpine() -> Reference {
        Reference::parse("alpine:3.20").unwrap()
    }

    #[test]
    fn plain_http_only_for_loopback_and_named_hosts() {
        let parse = |t| Reference::parse(t).unwrap();
        assert!(is_insecure(&parse("localhost:5000/a"), &[]));
        assert!(is_insecure(&parse("127.0.0.1:5000/a"), &[]));
        assert!(is_insecure(&parse("127.1.2.3/a"), &[]));
        assert!(!is_insecure(&parse("128.0.0.1/a"), &[]));
        assert!(!is_insecure(&parse("ghcr.io/a/b"), &[]));
        assert!(!is_insecure(&alpine(), &[]));
        assert!(is_insecure(&parse("reg.lan:5000/a"), &["reg.lan".into()]));
        assert!(is_insecure(
            &parse("reg.lan:5000/a"),
            &["reg.lan:5000".into()]
        ));
        assert!(!is_insecure(
            &parse("reg.lan:5000/a"),
            &["other.lan".into()]
        ));
    }

    #[test]
    fn an_index_gives_its_linux_amd64_manifest_or_lists_the_others() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = json!({
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": d('a'), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": d('b'), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": d('c'), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        });
        assert!(is_index(&index, ""));
        assert_eq!(choose_platform(&index, &alpine()).unwrap(), d('c'));
        let arm_only =
            json!({"manifests": [index["manifests"][0].clone(), index["manifests"][1].clone()]});
        assert!(is_index(&arm_only, DOCKER_LIST));
        let err = choose_platform(&arm_only, &alpine())
            .unwrap_err()
            .to_string();
        assert!(err.contains("it has: linux/arm64/v8"), "{err}");
        assert!(!err.contains("unknown"), "{err}");
        assert!(!is_index(&json!({"layers": [], "config": {}}), ""));
    }

    #[test]
    fn manifests_and_layers_microrun_cannot_read_are_named() {
        let err = check_manifest(&json!({"schemaVersion": 1}), &alpine()).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        let err = check_manifest(
            &json!({"schemaVersion": 2, "mediaType": "application/vnd.cncf.helm.chart"}),
            &alpine(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("helm"), "{err}");
        assert!(check_manifest(&json!({"schemaVersion": 2}), &alpine()).is_ok());
        assert!(is_readable_layer(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(!is_readable_layer(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        let err = descriptor(
            Some(&json!({"digest": "md5:x", "size": 1})),
            &alpine(),
            "a layer",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    /// A store holding one image whose single gzip layer is `len` bytes (a
    /// sparse file: the magic, then zeros, so not a valid stream), and
    /// that image's record.
    fn stored_image(len: u64) -> (tempfile::TempDir, BlobStore, Record) {
        use sha2::Digest as _;
        let cache = tempfile::tempdir().unwrap();
        let store = BlobStore::open(cache.path()).unwrap();
        let digest = |bytes: &[u8]| format!("sha256:{}", client::hex(&sha2::Sha256::digest(bytes)));
        let layer = format!("sha256:{}", "a".repeat(64));
        let file = std::fs::File::create(store.blob_path(&layer)).unwrap();
        std::io::Write::write_all(&mut &file, &[0x1f, 0x8b, 8, 0]).unwrap();
        file.set_len(len).unwrap();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "b".repeat(64))]},
        })
        .to_string();
        let config_digest = digest(config.as_bytes());
        store.put(&config_digest, config.as_bytes()).unwrap();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": len}],
        })
        .to_string();
        let manifest_digest = digest(manifest.as_bytes());
        store.put(&manifest_digest, manifest.as_bytes()).unwrap();
        let record = Record {
            name: "127.0.0.1:5000/big:1".into(),
            digest: manifest_digest.clone(),
            manifest: manifest_digest,
            used: None,
        };
        (cache, store, record)
    }

    #[test]
    fn an_image_the_plan_boots_from_the_disk_is_not_converted_to_an_archive() {
        let reference = Reference::parse("127.0.0.1:5000/big:1").unwrap();
        // 100 MiB of gzip: estimated at 300 MiB unpacked, above the threshold.
        let (_cache, store, record) = stored_image(100 << 20);
        let image =
            initrd_tools::image::open_layout_manifest(store.root(), &record.manifest, "big")
                .unwrap();
        assert!(image.unpacked_estimate().unwrap() > plan_root::DISK_THRESHOLD);
        assert!(boots_from_disk(&image, None));
        assert!(boots_from_disk(&image, Some(RootChoice::Disk)));
        assert!(!boots_from_disk(&image, Some(RootChoice::Initrd)));
        // The layer is no valid gzip stream: any conversion would fail.
        // Without --root the run's open makes no archive, and succeeds.
        open_stored(&store, &record, &reference, Some(None)).unwrap();

        let (_cache, store, record) = stored_image(1 << 20);
        let small =
            initrd_tools::image::open_layout_manifest(store.root(), &record.manifest, "small")
                .unwrap();
        assert!(!boots_from_disk(&small, None));
        assert!(boots_from_disk(&small, Some(RootChoice::Disk)));
    }

    #[test]
    fn records_are_per_tag_or_per_digest() {
        assert_eq!(record_name(&alpine()), "docker.io/library/alpine:3.20");
        let digest = format!("sha256:{}", "e".repeat(64));
        let pinned = Reference::parse(&format!("alpine:3.20@{digest}")).unwrap();
        assert_eq!(
            record_name(&pinned),
            format!("docker.io/library/alpine@{digest}")
        );
        assert_eq!(ago(Duration::from_secs(5)), "5 s ago");
        assert_eq!(ago(Duration::from_secs(7200)), "2 h ago");
    }
}
