//! Builds container images for tests, from scratch: layer tars (with the
//! `tar` crate), compressed or not, and the four layouts microrun reads
//! (OCI layout directory, OCI archive, docker-archive legacy and Docker
//! 25+). Shared by initrd-tools' tests and microrun's end-to-end tests
//! (`#[path]`-included there).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What a layer entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    HardLink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry of a layer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl Entry {
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
}

fn entry(path: &str, kind: Kind, mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
    }
}

pub fn dir(path: &str) -> Entry {
    entry(path, Kind::Dir, 0o755)
}

pub fn file(path: &str, data: &[u8]) -> Entry {
    entry(path, Kind::File(data.to_vec()), 0o644)
}

pub fn symlink(path: &str, target: &str) -> Entry {
    entry(path, Kind::Symlink(target.to_string()), 0o777)
}

pub fn hard_link(path: &str, target: &str) -> Entry {
    entry(path, Kind::HardLink(target.to_string()), 0o644)
}

pub fn char_dev(path: &str, major: u32, minor: u32) -> Entry {
    entry(path, Kind::Char(major, minor), 0o666)
}

pub fn block_dev(path: &str, major: u32, minor: u32) -> Entry {
    entry(path, Kind::Block(major, minor), 0o660)
}

pub fn fifo(path: &str) -> Entry {
    entry(path, Kind::Fifo, 0o600)
}

/// `.wh.NAME` beside `path`: hides `path` of lower layers.
pub fn whiteout(path: &str) -> Entry {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (format!("{dir}/"), name),
        None => (String::new(), path),
    };
    file(&format!("{dir}.wh.{name}"), b"")
}

/// `.wh..wh..opq` in `dir`: hides all of `dir` in lower layers.
pub fn opaque(dir: &str) -> Entry {
    file(&format!("{dir}/.wh..wh..opq"), b"")
}

/// The tar of `entries`, in the order given, as GNU tar writes headers.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(e.mode);
        header.set_uid(e.uid);
        header.set_gid(e.gid);
        header.set_mtime(e.mtime);
        header.set_size(0);
        let mut data: &[u8] = &[];
        match &e.kind {
            Kind::Dir => header.set_entry_type(tar::EntryType::Directory),
            Kind::File(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                data = bytes;
            }
            Kind::Symlink(target) | Kind::HardLink(target) => {
                header.set_entry_type(if matches!(e.kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                builder
                    .append_link(&mut header, &e.path, target)
                    .expect("append link");
                continue;
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                header.set_entry_type(if matches!(e.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                header.set_device_major(*major).unwrap();
                header.set_device_minor(*minor).unwrap();
            }
            Kind::Fifo => header.set_entry_type(tar::EntryType::Fifo),
        }
        // Bypasses the builder's path checks: tests write `..` names too.
        set_raw_path(&mut header, &e.path);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

/// Writes `path` into the header's name field as is (up to 100 bytes).
fn set_raw_path(header: &mut tar::Header, path: &str) {
    let name = &mut header.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
}

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

pub fn compress(data: &[u8], how: Compression) -> Vec<u8> {
    match how {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        Compression::Xz => {
            let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        Compression::Bzip2 => {
            let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
    }
}

/// `tar` as umoci's `insert` writes a layer: without the end-of-archive
/// blocks and without the padding after the last entry's data.
pub fn unpadded(tar: &[u8]) -> Vec<u8> {
    let mut tar = tar.to_vec();
    while tar.ends_with(&[0; 512]) {
        tar.truncate(tar.len() - 512);
    }
    // The last header, then its data: cut the data's padding.
    let mut at = 0;
    let mut last = None;
    while at + 512 <= tar.len() {
        let header = tar::Header::from_byte_slice(&tar[at..at + 512]);
        let size = header.entry_size().unwrap();
        last = Some((at + 512, size as usize));
        at += 512 + (size as usize).div_ceil(512) * 512;
    }
    let (data, size) = last.expect("a non-empty tar");
    tar.truncate(data + size);
    tar
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// A cache of the test's own: a temporary directory made
/// `XDG_CACHE_HOME`, for the process (so for a test whose binary has no
/// other test that uses the cache).
pub fn private_cache_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_CACHE_HOME", home.path());
    home
}

/// An image to build: layers (tar, compression) and the configuration's
/// `config` section.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<(Vec<u8>, Compression)>,
    pub config: Value,
    pub architecture: &'static str,
}

impl ImageSpec {
    pub fn new(layers: Vec<(Vec<u8>, Compression)>, config: Value) -> Self {
        ImageSpec {
            layers,
            config,
            architecture: "amd64",
        }
    }

    /// The configuration blob (diff_ids are the uncompressed layers').
    pub fn config_blob(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|(tar, _)| digest(tar)).collect();
        serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }
}

/// The files of a layout or archive: name -> contents, and symlinks.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub files: BTreeMap<String, Vec<u8>>,
    pub symlinks: BTreeMap<String, String>,
}

impl Files {
    fn blob(&mut self, data: Vec<u8>) -> Value {
        let d = digest(&data);
        let size = data.len();
        self.files
            .insert(format!("blobs/sha256/{}", sha256_hex(&data)), data);
        json!({"digest": d, "size": size})
    }

    /// The first `<id>/layer.tar` of a legacy docker-archive.
    pub fn legacy_layer(&self) -> String {
        let name = self.files.keys().find(|k| k.ends_with("/layer.tar"));
        name.expect("a legacy docker-archive layer").clone()
    }

    /// Writes the files under `dir`.
    pub fn write_to(&self, dir: &Path) {
        for (name, data) in &self.files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        for (name, target) in &self.symlinks {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
        }
    }

    /// An uncompressed tar of the files (directories first, as `docker
    /// save` writes them).
    pub fn tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for name in self.files.keys().chain(self.symlinks.keys()) {
            let mut parts: Vec<&str> = name.split('/').collect();
            parts.pop();
            for i in 1..=parts.len() {
                dirs.insert(parts[..i].join("/"));
            }
        }
        for dir in dirs {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{dir}/"), &[][..])
                .unwrap();
        }
        for (name, data) in &self.files {
            let mut header = tar::Header::new_ustar();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, name, &data[..]).unwrap();
        }
        for (name, target) in &self.symlinks {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, name, target).unwrap();
        }
        builder.into_inner().unwrap()
    }
}

fn layer_media_type(how: Compression) -> &'static str {
    match how {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        // No media type names these; the content says what they are.
        Compression::Xz => "application/vnd.oci.image.layer.v1.tar+xz",
        Compression::Bzip2 => "application/vnd.oci.image.layer.v1.tar+bzip2",
    }
}

/// Adds the image's config, layers and manifest blobs; returns the
/// manifest's descriptor (without a platform).
pub fn add_image_blobs(files: &mut Files, spec: &ImageSpec) -> Value {
    let mut config = files.blob(spec.config_blob());
    config["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
    let layers: Vec<Value> = spec
        .layers
        .iter()
        .map(|(tar, how)| {
            let mut d = files.blob(compress(tar, *how));
            d["mediaType"] = json!(layer_media_type(*how));
            d
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let mut descriptor = files.blob(serde_json::to_vec(&manifest).unwrap());
    descriptor["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
    descriptor
}

/// An OCI image layout whose index lists `manifests` (descriptors).
pub fn oci_layout_with(mut files: Files, manifests: Vec<Value>) -> Files {
    files.files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    files
        .files
        .insert("index.json".into(), serde_json::to_vec(&index).unwrap());
    files
}

/// An OCI image layout of `spec`, its manifest listed for linux/amd64.
pub fn oci_layout(spec: &ImageSpec) -> Files {
    let mut files = Files::default();
    let mut manifest = add_image_blobs(&mut files, spec);
    manifest["platform"] = json!({"architecture": spec.architecture, "os": "linux"});
    oci_layout_with(files, vec![manifest])
}

/// A legacy docker-archive (`docker save` before Docker 25): layers
/// uncompressed as `<id>/layer.tar`, a layer that occurs twice as a symlink
/// to its first copy, as docker writes it.
pub fn docker_legacy(spec: &ImageSpec) -> Files {
    let mut files = Files::default();
    let config = spec.config_blob();
    let config_name = format!("{}.json", sha256_hex(&config));
    files.files.insert(config_name.clone(), config);
    let mut layers = Vec::new();
    let mut first_of: BTreeMap<String, String> = BTreeMap::new();
    for (i, (tar, _)) in spec.layers.iter().enumerate() {
        // Layer IDs are not digests of the layer: chain IDs, here made up.
        let id = sha256_hex(format!("layer {i} {}", sha256_hex(tar)).as_bytes());
        let name = format!("{id}/layer.tar");
        match first_of.get(&sha256_hex(tar)) {
            Some(first) => {
                files.symlinks.insert(name.clone(), format!("../{first}"));
            }
            None => {
                files.files.insert(name.clone(), tar.clone());
                first_of.insert(sha256_hex(tar), name.clone());
            }
        }
        files.files.insert(format!("{id}/VERSION"), b"1.0".to_vec());
        files.files.insert(format!("{id}/json"), b"{}".to_vec());
        layers.push(name);
    }
    let manifest =
        json!([{"Config": config_name, "RepoTags": ["microrun-test:latest"], "Layers": layers}]);
    files.files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    );
    files
}

/// A Docker 25+ docker-archive: an OCI layout (uncompressed layers) plus
/// docker's `manifest.json` naming blobs by path.
pub fn docker_25(spec: &ImageSpec) -> Files {
    let uncompressed = ImageSpec {
        layers: spec
            .layers
            .iter()
            .map(|(tar, _)| (tar.clone(), Compression::None))
            .collect(),
        ..spec.clone()
    };
    let mut files = Files::default();
    let manifest = add_image_blobs(&mut files, &uncompressed);
    let config_name = format!("blobs/sha256/{}", sha256_hex(&uncompressed.config_blob()));
    let layers: Vec<String> = uncompressed
        .layers
        .iter()
        .map(|(tar, _)| format!("blobs/sha256/{}", sha256_hex(tar)))
        .collect();
    let docker =
        json!([{"Config": config_name, "RepoTags": ["microrun-test:latest"], "Layers": layers}]);
    files
        .files
        .insert("manifest.json".into(), serde_json::to_vec(&docker).unwrap());
    oci_layout_with(files, vec![manifest])
}

/// A docker-archive as podman, skopeo and buildah write it: each layer
/// `<diff_id hex>.tar` at the top, `<id>/layer.tar` a symlink to it, the
/// configuration `<hex>.json`; `manifest.json` names the `<hex>.tar`
/// files, or with `via_links` the `<id>/layer.tar` links.
pub fn docker_podman(spec: &ImageSpec, via_links: bool) -> Files {
    let mut files = Files::default();
    let config = spec.config_blob();
    let config_name = format!("{}.json", sha256_hex(&config));
    files.files.insert(config_name.clone(), config);
    let mut layers = Vec::new();
    for (i, (tar, _)) in spec.layers.iter().enumerate() {
        let physical = format!("{}.tar", sha256_hex(tar));
        let id = sha256_hex(format!("podman layer {i}").as_bytes());
        let link = format!("{id}/layer.tar");
        files.files.insert(physical.clone(), tar.clone());
        files
            .symlinks
            .insert(link.clone(), format!("../{physical}"));
        files.files.insert(format!("{id}/VERSION"), b"1.0".to_vec());
        layers.push(if via_links { link } else { physical });
    }
    files.files.insert("repositories".into(), b"{}".to_vec());
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["localhost/microrun-test:latest"],
        "Layers": layers,
    }]);
    files.files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    );
    files
}

/// An OCI layout holding several images, each tagged as `skopeo copy ...
/// oci:DIR:TAG` tags it (`org.opencontainers.image.ref.name`), without a
/// platform in the index, as skopeo writes it.
pub fn oci_layout_tagged(images: &[(&str, &ImageSpec)]) -> Files {
    let mut files = Files::default();
    let mut manifests = Vec::new();
    for (tag, spec) in images {
        let mut manifest = add_image_blobs(&mut files, spec);
        manifest["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        manifests.push(manifest);
    }
    oci_layout_with(files, manifests)
}

/// skopeo's `dir:` layout: `manifest.json`, `version`, and the blobs
/// named by their hex digests.
pub fn dir_transport(spec: &ImageSpec) -> Files {
    let mut layout = Files::default();
    let descriptor = add_image_blobs(&mut layout, spec);
    let manifest_hex = descriptor["digest"].as_str().unwrap()["sha256:".len()..].to_string();
    let mut files = Files::default();
    for (name, data) in layout.files {
        let hex = name.strip_prefix("blobs/sha256/").unwrap();
        if hex == manifest_hex {
            files.files.insert("manifest.json".into(), data);
        } else {
            files.files.insert(hex.to_string(), data);
        }
    }
    files.files.insert(
        "version".into(),
        b"Directory Transport Version: 1.1\n".to_vec(),
    );
    files
}
