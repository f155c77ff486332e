//! An image opened before and unchanged since is not read again: its
//! opening is looked up by the metadata of its files (issue 27), and so is
//! an image of the registry pulls' blob store by its blobs'. One test in
//! its own binary, since it sets `XDG_CACHE_HOME`.

mod images;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use images::*;
use initrd_tools::image::{detect, open_layout_manifest, Detected, Image};
use serde_json::json;

fn open(path: &Path) -> Image {
    match detect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        Detected::Image(image) => *image,
        other => panic!("{} detected as {other:?}", path.display()),
    }
}

fn image_with_cmd(cmd: &str) -> Vec<u8> {
    docker_legacy(&spec_with_cmd(cmd)).tar()
}

fn layer() -> Vec<u8> {
    layer_tar(&[dir("bin"), file("bin/tool", b"#!/bin/sh\n")])
}

fn spec_with_cmd(cmd: &str) -> ImageSpec {
    ImageSpec::new(
        vec![(layer(), Compression::None)],
        json!({"Cmd": [cmd], "Env": ["PATH=/bin"]}),
    )
}

/// The remembered openings in the cache.
fn entries(cache_home: &Path) -> Vec<PathBuf> {
    let facts = cache_home.join("microrun/facts");
    let Ok(dir) = std::fs::read_dir(facts) else {
        return Vec::new();
    };
    dir.map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "image"))
        .collect()
}

/// The remembered opening of `path`.
fn entry_of(cache_home: &Path, path: &Path) -> Option<PathBuf> {
    entry_keyed(cache_home, &format!(" {} ", path.display()))
}

/// The remembered opening whose key holds `needle`.
fn entry_keyed(cache_home: &Path, needle: &str) -> Option<PathBuf> {
    entries(cache_home).into_iter().find(|entry| {
        let text = std::fs::read_to_string(entry).unwrap();
        text.lines().next().is_some_and(|key| key.contains(needle))
    })
}

/// One image of a blob store: its manifest's digest, and the names of its
/// manifest, configuration and layer blobs in the store.
struct Pulled {
    manifest: String,
    blobs: [String; 3],
}

/// A store of blobs shared by images, as the registry pulls' is (an OCI
/// layout without an index): an image per command, each with a layer of
/// its own.
fn blob_store(store: &Path, cmds: &[&str]) -> Vec<Pulled> {
    let mut files = Files::default();
    let blob = |data: &[u8]| format!("blobs/sha256/{}", sha256_hex(data));
    let pulled = cmds
        .iter()
        .map(|cmd| {
            let layer = layer_tar(&[dir("bin"), file("bin/tool", cmd.as_bytes())]);
            let spec = ImageSpec::new(
                vec![(layer.clone(), Compression::None)],
                json!({"Cmd": [cmd]}),
            );
            let manifest = add_image_blobs(&mut files, &spec)["digest"]
                .as_str()
                .unwrap()
                .to_string();
            let manifest_blob = format!("blobs/sha256/{}", &manifest[7..]);
            Pulled {
                manifest,
                blobs: [manifest_blob, blob(&spec.config_blob()), blob(&layer)],
            }
        })
        .collect();
    let files = oci_layout_with(files, Vec::new());
    files.write_to(store);
    std::fs::remove_file(store.join("index.json")).unwrap();
    pulled
}

fn open_pulled(store: &Path, image: &Pulled, name: &str) -> Image {
    open_layout_manifest(store, &image.manifest, name)
        .unwrap_or_else(|e| panic!("{}: {e}", image.manifest))
}

/// What `entry` says, `from` replaced by `to`.
fn edit(entry: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(entry).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(entry, text.replace(from, to)).unwrap();
}

fn touch(path: &Path) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        .unwrap();
}

fn converted(image: &Image, out: &Path) -> Vec<u8> {
    image.convert_to(out).unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn an_unchanged_image_is_not_read_again_and_a_changed_one_is() {
    let cache_home = private_cache_home();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("image.tar");
    std::fs::write(&path, image_with_cmd("/bin/first")).unwrap();
    let layout = work.path().join("layout");
    oci_layout(&spec_with_cmd("/bin/layout")).write_to(&layout);
    let skopeo_dir = work.path().join("dir");
    dir_transport(&spec_with_cmd("/bin/dir")).write_to(&skopeo_dir);
    let store = work.path().join("oci");
    let cmds = ["/bin/pulled0", "/bin/pulled1", "/bin/pulled2"];
    let pulled = blob_store(&store, &cmds);

    // Just written: opened, not remembered (a rewrite within the same tick
    // of the file system's clock would keep its metadata).
    assert_eq!(open(&path).config().cmd, ["/bin/first"]);
    assert_eq!(open(&layout).config().cmd, ["/bin/layout"]);
    assert_eq!(open(&skopeo_dir).config().cmd, ["/bin/dir"]);
    assert_eq!(
        open_pulled(&store, &pulled[0], "r/p:0").config().cmd,
        [cmds[0]]
    );
    assert!(entries(cache_home.path()).is_empty());
    std::thread::sleep(Duration::from_millis(2100));
    let fresh = open(&path);
    let entry = entry_of(cache_home.path(), &path).unwrap();

    // Layouts too, each depending on the files it was read from: a layer
    // blob, or the dir: layout's manifest.json, touched is opened again.
    open(&layout);
    open(&skopeo_dir);
    assert_eq!(entries(cache_home.path()).len(), 3);
    edit(
        &entry_of(cache_home.path(), &layout).unwrap(),
        "/bin/layout",
        "/bin/believed",
    );
    edit(
        &entry_of(cache_home.path(), &skopeo_dir).unwrap(),
        "/bin/dir",
        "/bin/believed",
    );
    assert_eq!(open(&layout).config().cmd, ["/bin/believed"]);
    assert_eq!(open(&skopeo_dir).config().cmd, ["/bin/believed"]);
    touch(&layout.join("blobs/sha256").join(sha256_hex(&layer())));
    assert_eq!(open(&layout).config().cmd, ["/bin/layout"]);
    touch(&skopeo_dir.join("manifest.json"));
    assert_eq!(open(&skopeo_dir).config().cmd, ["/bin/dir"]);

    // The images of a blob store, by their manifests' digests, each
    // depending on its own blobs: not on the blobs' directory, which
    // another image's pull changes, nor on an index.
    let fresh_pulled: Vec<Image> = pulled
        .iter()
        .map(|p| open_pulled(&store, p, "r/p"))
        .collect();
    for (image, cmd) in pulled.iter().zip(cmds) {
        let entry = entry_keyed(cache_home.path(), &format!(" manifest {}", image.manifest));
        let entry = entry.unwrap_or_else(|| panic!("{} is not remembered", image.manifest));
        let text = std::fs::read_to_string(&entry).unwrap();
        for blob in &image.blobs {
            assert!(text.contains(&format!("[\"{blob}\",")), "{blob}: {text}");
        }
        assert!(
            !text.contains("index.json") && !text.contains("\"blobs/sha256\""),
            "{text}"
        );
        edit(&entry, cmd, "/bin/believed");
    }
    std::fs::write(
        store.join("blobs/sha256").join("e".repeat(64)),
        b"pulled later",
    )
    .unwrap();
    for (image, fresh) in pulled.iter().zip(&fresh_pulled) {
        // What the entry says is believed: no blob was read for it.
        let recalled = open_pulled(&store, image, "r/p:again");
        assert_eq!(recalled.config().cmd, ["/bin/believed"]);
        assert!(recalled.description().contains("r/p:again, manifest"));
        assert_eq!(recalled.cache_key(), fresh.cache_key());
        assert_eq!(
            recalled.unpacked_estimate().unwrap(),
            fresh.unpacked_estimate().unwrap()
        );
    }
    // A manifest, configuration or layer blob touched: opened again.
    for (n, image) in pulled.iter().enumerate() {
        touch(&store.join(&image.blobs[n]));
        assert_eq!(open_pulled(&store, image, "r/p").config().cmd, [cmds[n]]);
    }

    // Remembered: what the entry says is believed while the file's
    // metadata holds, so the archive is not read for it.
    edit(&entry, "/bin/first", "/bin/believed");
    let recalled = open(&path);
    assert_eq!(recalled.config().cmd, ["/bin/believed"]);
    assert_eq!(recalled.description(), fresh.description());
    assert_eq!(recalled.cache_key(), fresh.cache_key());
    assert_eq!(
        recalled.unpacked_estimate().unwrap(),
        fresh.unpacked_estimate().unwrap()
    );
    // Its layers are where they were: it converts to the same archive.
    let out = work.path().join("out.cpio");
    assert_eq!(converted(&recalled, &out), converted(&fresh, &out));
    // A tag is opened apart.
    let tagged = PathBuf::from(format!("{}:microrun-test:latest", path.display()));
    assert_eq!(open(&tagged).config().cmd, ["/bin/first"]);

    // Touched, the same bytes: opened again.
    touch(&path);
    assert_eq!(open(&path).config().cmd, ["/bin/first"]);
    // Rewritten in place with another image: its own configuration.
    std::fs::write(&path, image_with_cmd("/bin/second")).unwrap();
    assert_eq!(open(&path).config().cmd, ["/bin/second"]);
}
