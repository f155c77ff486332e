//! OCI image layouts (a directory, or a tar of one): `oci-layout`,
//! `index.json`, and blobs named by their digests. The index may list
//! several manifests, or nest indexes (`skopeo`, `docker buildx`): the
//! linux/amd64 one is taken. An index may also list several images, told
//! apart by their `org.opencontainers.image.ref.name` tags (`skopeo copy
//! ... oci:DIR:TAG` twice): then the tag the user gives (`DIR:TAG`) picks.

use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, OciLayout, Os};

use super::config;
use super::store::Store;
use super::{cut, quote, Digest, Image, ImageError, ImageFormat, Layer};

/// Docker's names for the OCI index and manifest media types, which OCI
/// layouts written by Docker and some registries' copies use.
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How deep indexes may nest (an index of indexes is common; more is not).
const MAX_INDEX_DEPTH: usize = 4;

/// The annotation that tags a manifest in an index (`skopeo copy ...
/// oci:DIR:TAG` writes it), and containerd's full image name beside it
/// (Docker 25+ archives).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Opens the OCI layout in `store`: the image tagged `tag`, or without a
/// tag the only image it has (each image the linux/amd64 manifest of its
/// index entry).
pub(crate) fn open(
    store: &Store,
    format: ImageFormat,
    tag: Option<&str>,
) -> Result<Image, ImageError> {
    let path = store.image_path();
    let layout = store.read("oci-layout")?;
    let layout = OciLayout::from_reader(&layout[..])
        .map_err(|e| ImageError::invalid(path, format!("oci-layout: {e}")))?;
    if !layout.image_layout_version().starts_with("1.") {
        return Err(ImageError::invalid(
            path,
            format!(
                "oci-layout: image layout version {} (microrun reads version 1.x)",
                layout.image_layout_version()
            ),
        ));
    }
    let index = store.read("index.json")?;
    let index = ImageIndex::from_reader(&index[..])
        .map_err(|e| ImageError::invalid(path, format!("index.json: {e}")))?;
    let entries = index.manifests();
    let names: Vec<Vec<&str>> = entries.iter().map(ref_names).collect();
    let selected: Vec<usize> = match tag {
        Some(tag) => {
            let selected: Vec<usize> = (0..entries.len())
                .filter(|&i| names[i].contains(&tag))
                .collect();
            if selected.is_empty() {
                return Err(ImageError::NoSuchTag {
                    path: path.to_path_buf(),
                    tag: quote(tag.as_bytes()),
                    tags: cut(&tag_list(names.iter().filter_map(|n| n.first().copied()))),
                });
            }
            selected
        }
        None => (0..entries.len()).collect(),
    };
    // Each index entry is one image (a manifest, or an index of one
    // image's platforms): its linux/amd64 manifest, if any.
    let mut all = Vec::new();
    let mut chosen: Vec<(Candidate, usize)> = Vec::new();
    for i in selected {
        let mut group = Vec::new();
        collect_manifests(store, std::slice::from_ref(&entries[i]), 0, &mut group)?;
        if let Some(pick) = choose(&group) {
            if !chosen.iter().any(|(c, _)| c.digest == pick.digest) {
                chosen.push((pick.clone(), i));
            }
        }
        all.extend(group);
    }
    let (chosen, entry) = match chosen.len() {
        0 => {
            return Err(ImageError::NoPlatform {
                path: path.to_path_buf(),
                available: cut(&available(&all)),
            })
        }
        1 => chosen.swap_remove(0),
        count => {
            let tags: Vec<String> = chosen
                .iter()
                .map(|(c, i)| match names[*i].first() {
                    Some(name) => name.to_string(),
                    None => format!("untagged manifest {}", c.digest),
                })
                .collect();
            return Err(ImageError::SeveralImages {
                path: path.to_path_buf(),
                count,
                tags: cut(&tags.join(", ")),
                example: names
                    .iter()
                    .find_map(|n| n.first())
                    .map(|t| cut(t))
                    .unwrap_or_default(),
            });
        }
    };
    let manifest = store.read_blob(&chosen.digest, chosen.size)?;
    let manifest = ImageManifest::from_reader(&manifest[..])
        .map_err(|e| ImageError::invalid(path, format!("manifest {}: {e}", chosen.digest)))?;
    let mut image = from_manifest(store, format, &chosen.digest, &manifest)?;
    if let Some(name) = names[entry].first() {
        image.description.push_str(&format!(", tag {}", cut(name)));
    }
    Ok(image)
}

/// Opens the image whose manifest is the blob `digest` of the OCI layout in
/// `store`, without its `index.json`: the registry pull's blob store (one
/// layout shared by every pulled image) names its images by manifest
/// digest. Returns the image and its configuration's digest (the other
/// blob read).
pub(crate) fn open_manifest(store: &Store, digest: &Digest) -> Result<(Image, Digest), ImageError> {
    let path = store.image_path();
    let size = store.locate_blob_size(digest)?;
    let bytes = store.read_blob(digest, size)?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| ImageError::invalid(path, format!("manifest {digest}: {e}")))?;
    let image = from_manifest(store, ImageFormat::OciLayout, digest, &manifest)?;
    Ok((image, parse_digest(store, manifest.config())?))
}

/// What an index entry is tagged: its `ref.name`, then containerd's name.
fn ref_names(descriptor: &Descriptor) -> Vec<&str> {
    let Some(annotations) = descriptor.annotations() else {
        return Vec::new();
    };
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|key| annotations.get(*key).map(String::as_str))
        .collect()
}

/// Tags for a message: sorted, each once; "none" when there are none.
pub(crate) fn tag_list<'a>(tags: impl Iterator<Item = &'a str>) -> String {
    let tags: std::collections::BTreeSet<&str> = tags.collect();
    if tags.is_empty() {
        return "none".to_string();
    }
    tags.into_iter().collect::<Vec<_>>().join(", ")
}

/// What the `version` file of skopeo's `dir:` layout starts with.
pub(crate) const DIR_TRANSPORT_VERSION: &str = "Directory Transport Version: ";

/// Opens skopeo's `dir:` layout in `store` (a [`Store::Flat`]): its
/// `manifest.json` is one image's manifest (OCI's or Docker's schema 2),
/// the blobs it names are files named by their hex digests.
pub(crate) fn open_dir_transport(store: &Store) -> Result<Image, ImageError> {
    let path = store.image_path();
    let version = store.read("version")?;
    let version = String::from_utf8_lossy(&version);
    let supported = version
        .strip_prefix(DIR_TRANSPORT_VERSION)
        .is_some_and(|v| v.starts_with("1."));
    if !supported {
        return Err(ImageError::invalid(
            path,
            format!(
                "its version file says {}, a dir: layout microrun does not read (it reads \
                 version 1.x): copy it to an OCI layout with `skopeo copy dir:{} oci:OUT` \
                 and run OUT",
                quote(version.trim_end().as_bytes()),
                path.display()
            ),
        ));
    }
    let bytes = store.read("manifest.json")?;
    let manifest = ImageManifest::from_reader(&bytes[..]).map_err(|e| {
        ImageError::invalid(
            path,
            format!(
                "manifest.json: {e} (microrun reads one image's schema 2 or OCI manifest; \
                 for a list of several, copy one image with `skopeo copy dir:{} oci:OUT`)",
                path.display()
            ),
        )
    })?;
    from_manifest(
        store,
        ImageFormat::DirTransport,
        &Digest::of_bytes(&bytes),
        &manifest,
    )
}

/// A manifest an index lists.
#[derive(Clone)]
struct Candidate {
    digest: Digest,
    size: u64,
    /// `os/arch[/variant]`, when the index says.
    platform: Option<String>,
    amd64: bool,
}

/// The linux/amd64 manifest; a single manifest without a platform is
/// taken too (its configuration's platform is checked later).
fn choose(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .find(|c| c.amd64)
        .or_else(|| match candidates {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
}

fn available(candidates: &[Candidate]) -> String {
    if candidates.is_empty() {
        return "no image manifest at all".to_string();
    }
    let names: Vec<&str> = candidates
        .iter()
        .map(|c| {
            c.platform
                .as_deref()
                .unwrap_or("a manifest without a platform")
        })
        .collect();
    names.join(", ")
}

fn parse_digest(store: &Store, descriptor: &Descriptor) -> Result<Digest, ImageError> {
    let text = descriptor.digest().to_string();
    Digest::parse(&text).ok_or_else(|| {
        ImageError::invalid(
            store.image_path(),
            format!(
                "the digest {} is not sha256, the only algorithm microrun checks",
                quote(text.as_bytes())
            ),
        )
    })
}

fn collect_manifests(
    store: &Store,
    descriptors: &[Descriptor],
    depth: usize,
    out: &mut Vec<Candidate>,
) -> Result<(), ImageError> {
    for descriptor in descriptors {
        let is_index = match descriptor.media_type() {
            MediaType::ImageIndex => true,
            MediaType::ImageManifest => false,
            MediaType::Other(other) if other == DOCKER_MANIFEST_LIST => true,
            MediaType::Other(other) if other == DOCKER_MANIFEST => false,
            other => {
                log::debug!(
                    "{}: skipping an index entry of type {other}",
                    store.image_path().display()
                );
                continue;
            }
        };
        let digest = parse_digest(store, descriptor)?;
        if is_index {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::invalid(
                    store.image_path(),
                    format!("indexes nest more than {MAX_INDEX_DEPTH} deep"),
                ));
            }
            let nested = store.read_blob(&digest, descriptor.size())?;
            let nested = ImageIndex::from_reader(&nested[..]).map_err(|e| {
                ImageError::invalid(store.image_path(), format!("index {digest}: {e}"))
            })?;
            collect_manifests(store, nested.manifests(), depth + 1, out)?;
            continue;
        }
        let platform = descriptor.platform().as_ref();
        out.push(Candidate {
            digest,
            size: descriptor.size(),
            platform: platform.map(|p| match p.variant() {
                Some(variant) => format!("{}/{}/{variant}", p.os(), p.architecture()),
                None => format!("{}/{}", p.os(), p.architecture()),
            }),
            amd64: platform
                .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64),
        });
    }
    Ok(())
}

/// The image a manifest describes: its configuration and its layers,
/// located and sized (their contents are checked when converting).
fn from_manifest(
    store: &Store,
    format: ImageFormat,
    manifest_digest: &Digest,
    manifest: &ImageManifest,
) -> Result<Image, ImageError> {
    let path = store.image_path();
    let config_digest = parse_digest(store, manifest.config())?;
    let config_bytes = store.read_blob(&config_digest, manifest.config().size())?;
    let parsed = config::parse(&config_bytes, path, &config_digest.to_string())?;
    check_layer_count(path, parsed.diff_ids.len(), manifest.layers().len())?;
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (descriptor, diff_id) in manifest.layers().iter().zip(parsed.diff_ids) {
        let digest = parse_digest(store, descriptor)?;
        let located = store.locate_blob(&digest, descriptor.size())?;
        layers.push(Layer {
            name: digest.to_string(),
            file: located.file,
            offset: located.offset,
            len: located.len,
            digest: Some(digest),
            diff_id: Some(diff_id),
        });
    }
    Ok(Image {
        path: path.to_path_buf(),
        format,
        layers,
        config: parsed.config,
        identity: format!("manifest:{manifest_digest}"),
        description: format!("manifest {manifest_digest}"),
        known_estimate: None,
    })
}

/// The configuration names one uncompressed digest per layer.
pub(crate) fn check_layer_count(
    path: &std::path::Path,
    diff_ids: usize,
    layers: usize,
) -> Result<(), ImageError> {
    if diff_ids != layers {
        return Err(ImageError::invalid(
            path,
            format!("its configuration lists {diff_ids} layer digests for {layers} layers"),
        ));
    }
    Ok(())
}
