//! The image configuration (`application/vnd.oci.image.config.v1+json`,
//! which docker-archives use too): the run defaults microrun takes from it,
//! and the layer digests it lists.

use std::path::Path;

use oci_spec::image::{Arch, ImageConfiguration, Os};

use super::{quote, Digest, ImageError};

/// What an image asks a run to default to, as `docker run` uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`: always the start of the command.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the arguments after the entrypoint, replaced by `-- CMD`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value` strings in the image's order.
    pub env: Vec<String>,
    /// `WorkingDir`, when set and not empty.
    pub working_dir: Option<String>,
    /// `User`, when set and not empty (microrun reports it; the command
    /// runs as root).
    pub user: Option<String>,
}

/// A parsed configuration blob: the run defaults and the digests of the
/// uncompressed layers (`rootfs.diff_ids`), first layer first.
#[derive(Debug)]
pub(crate) struct ParsedConfig {
    pub config: ImageConfig,
    pub diff_ids: Vec<Digest>,
}

/// Parses the configuration blob `name` of the image at `path`, and checks
/// that it is for linux/amd64.
pub(crate) fn parse(bytes: &[u8], path: &Path, name: &str) -> Result<ParsedConfig, ImageError> {
    let parsed = ImageConfiguration::from_reader(bytes)
        .map_err(|e| ImageError::invalid(path, format!("configuration {name}: {e}")))?;
    if *parsed.os() != Os::Linux || *parsed.architecture() != Arch::Amd64 {
        return Err(ImageError::NoPlatform {
            path: path.to_path_buf(),
            available: format!(
                "{}/{} (from its configuration {name})",
                parsed.os(),
                parsed.architecture()
            ),
        });
    }
    let mut diff_ids = Vec::new();
    for text in parsed.rootfs().diff_ids() {
        let digest = Digest::parse(text).ok_or_else(|| {
            ImageError::invalid(
                path,
                format!(
                    "configuration {name}: layer digest {} is not a sha256 digest",
                    quote(text.as_bytes())
                ),
            )
        })?;
        diff_ids.push(digest);
    }
    let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let config = match parsed.config() {
        Some(c) => ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
        },
        None => ImageConfig::default(),
    };
    Ok(ParsedConfig { config, diff_ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                   "Env": ["PATH=/bin", "A=b=c"], "WorkingDir": "/srv", "User": "",
                   "Healthcheck": {"Test": ["NONE"]}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},
        "container_config": {"Cmd": null}
    }"#;

    #[test]
    fn run_defaults_come_from_the_config_section() {
        let parsed = parse(CONFIG.as_bytes(), Path::new("img"), "c.json").unwrap();
        assert_eq!(parsed.config.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(parsed.config.cmd, ["echo hi"]);
        assert_eq!(parsed.config.env, ["PATH=/bin", "A=b=c"]);
        assert_eq!(parsed.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(parsed.config.user, None);
        assert_eq!(parsed.diff_ids.len(), 1);
    }

    #[test]
    fn other_platforms_and_bad_digests_are_refused() {
        let arm = CONFIG.replace("amd64", "arm64");
        let err = parse(arm.as_bytes(), Path::new("img"), "c.json").unwrap_err();
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        let md5 = CONFIG.replace("sha256:0000", "md5:0000");
        let err = parse(md5.as_bytes(), Path::new("img"), "c.json").unwrap_err();
        assert!(err.to_string().contains("not a sha256 digest"), "{err}");
        let err = parse(b"{", Path::new("img"), "c.json").unwrap_err();
        assert!(err.to_string().contains("c.json"), "{err}");
    }
}
