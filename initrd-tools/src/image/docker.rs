//! docker-archives (`docker save`, `podman save`). `manifest.json` lists
//! the image's configuration and layers by their paths in the archive: in
//! the legacy layout `<id>.json` and `<id>/layer.tar`, since Docker 25
//! `blobs/sha256/<hex>` (the same archive is also an OCI layout; the
//! docker manifest is read, since it names exactly the platform saved).

use serde_json::Value;

use super::config;
use super::oci::{check_layer_count, tag_list};
use super::store::Store;
use super::{cut, quote, Digest, Image, ImageError, ImageFormat, Layer};

/// Opens the docker-archive in `store`: its only image, or the one with
/// the tag `tag` (`NAME:TAG` as `docker save` wrote it, or just `TAG`).
pub(crate) fn open(store: &Store, tag: Option<&str>) -> Result<Image, ImageError> {
    let path = store.image_path();
    let invalid = |detail: String| ImageError::invalid(path, format!("manifest.json: {detail}"));
    let bytes = store.read("manifest.json")?;
    let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let images = manifest
        .as_array()
        .ok_or_else(|| invalid("not a list of images".to_string()))?;
    let all_tags = || cut(&tag_list(images.iter().flat_map(repo_tags)));
    let picked: Vec<&Value> = match tag {
        Some(tag) => images
            .iter()
            .filter(|image| repo_tags(image).any(|t| tag_matches(t, tag)))
            .collect(),
        None => images.iter().collect(),
    };
    let image = match picked.as_slice() {
        [] if images.is_empty() => return Err(invalid("it lists no image".to_string())),
        [] => {
            return Err(ImageError::NoSuchTag {
                path: path.to_path_buf(),
                tag: quote(tag.unwrap_or_default().as_bytes()),
                tags: all_tags(),
            })
        }
        [image] => *image,
        several => {
            let tags: Vec<String> = several.iter().map(|image| tags(image)).collect();
            return Err(ImageError::SeveralImages {
                path: path.to_path_buf(),
                count: several.len(),
                tags: cut(&tags.join("; ")),
                example: several
                    .iter()
                    .flat_map(|image| repo_tags(image))
                    .next()
                    .map(cut)
                    .unwrap_or_default(),
            });
        }
    };
    let config_name = image["Config"]
        .as_str()
        .ok_or_else(|| invalid("the image has no \"Config\" path".to_string()))?;
    let layer_names = image["Layers"]
        .as_array()
        .ok_or_else(|| invalid("the image has no \"Layers\" list".to_string()))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| invalid(format!("the layer {} is not a path", cut(&v.to_string()))))
        })
        .collect::<Result<Vec<&str>, ImageError>>()?;

    let config_bytes = store.read(config_name)?;
    let config_digest = Digest::of_bytes(&config_bytes);
    if let Some(named) = digest_named_by(config_name, true) {
        if named != config_digest {
            return Err(ImageError::DigestMismatch {
                path: path.to_path_buf(),
                blob: quote(config_name.as_bytes()),
                expected: named.to_string(),
                actual: config_digest.to_string(),
            });
        }
    }
    let parsed = config::parse(&config_bytes, path, &cut(config_name))?;
    check_layer_count(path, parsed.diff_ids.len(), layer_names.len())?;
    let mut layers = Vec::with_capacity(layer_names.len());
    for (name, diff_id) in layer_names.into_iter().zip(parsed.diff_ids) {
        let located = store.locate(name)?.ok_or_else(|| store.missing(name))?;
        layers.push(Layer {
            name: name.to_string(),
            file: located.file,
            offset: located.offset,
            len: located.len,
            digest: digest_named_by(name, false),
            diff_id: Some(diff_id),
        });
    }
    Ok(Image {
        path: path.to_path_buf(),
        format: ImageFormat::DockerArchive,
        layers,
        config: parsed.config,
        // The image ID: the configuration names every layer's digest
        // (checked when converting).
        identity: format!("config:{config_digest}"),
        description: format!("{}, image ID {config_digest}", cut(&tags(image))),
        known_estimate: None,
    })
}

/// The image's `RepoTags`.
fn repo_tags(image: &Value) -> impl Iterator<Item = &str> {
    image["RepoTags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether `given` names the tag `repo_tag` (`docker.io/library/alpine:3.20`):
/// all of it, its name without the registry (`alpine:3.20`,
/// `library/alpine:3.20`), or its tag alone (`3.20`).
fn tag_matches(repo_tag: &str, given: &str) -> bool {
    if given.contains(':') {
        return repo_tag == given
            || repo_tag
                .strip_suffix(given)
                .is_some_and(|registry| registry.ends_with('/'));
    }
    repo_tag
        .rsplit_once(':')
        .is_some_and(|(name, tag)| tag == given && !tag.contains('/') && !name.is_empty())
}

/// The image's tags, for messages.
fn tags(image: &Value) -> String {
    let tags: Vec<&str> = repo_tags(image).collect();
    if tags.is_empty() {
        "untagged".to_string()
    } else {
        tags.join(", ")
    }
}

/// The digest a member's name states: `blobs/sha256/<hex>`, and for a
/// configuration also the legacy `<hex>.json`. Legacy layer directories
/// are named by IDs that are not digests of the layer.
fn digest_named_by(name: &str, is_config: bool) -> Option<Digest> {
    let name = name.trim_start_matches("./");
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex);
    }
    if is_config {
        return name.strip_suffix(".json").and_then(Digest::from_hex);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_match_whole_without_the_registry_or_alone() {
        let tag = "docker.io/library/alpine:3.20";
        for given in [tag, "library/alpine:3.20", "alpine:3.20", "3.20"] {
            assert!(tag_matches(tag, given), "{given}");
        }
        for given in ["pine:3.20", "3.2", "alpine", "20", ""] {
            assert!(!tag_matches(tag, given), "{given}");
        }
        assert!(!tag_matches("host:5000/alpine", "5000/alpine"));
    }

    #[test]
    fn names_state_digests_only_where_docker_makes_them_so() {
        let hex = "b".repeat(64);
        assert_eq!(
            digest_named_by(&format!("blobs/sha256/{hex}"), false).map(|d| d.to_string()),
            Some(format!("sha256:{hex}"))
        );
        assert!(digest_named_by(&format!("{hex}.json"), true).is_some());
        assert!(digest_named_by(&format!("{hex}/layer.tar"), false).is_none());
        assert!(digest_named_by("blobs/sha256/short", false).is_none());
    }
}
