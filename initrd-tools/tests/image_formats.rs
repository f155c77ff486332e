//! The formats the everyday tools write besides `docker save` and `skopeo
//! copy oci:`, built here by hand: podman's docker-archives (`<hex>.tar`
//! layers, symlinked layer paths), OCI layouts with several tags
//! (`PATH:TAG`), layers without the final tar padding (umoci `insert`),
//! xz and bzip2 tarballs and layers, and skopeo's `dir:` layout.

mod images;

use std::path::{Path, PathBuf};

use images::*;
use initrd_tools::image::{detect, Compression as Found, Detected, Image, ImageError, ImageFormat};
use serde_json::json;

fn image(layer: &[u8], how: Compression, cmd: &str) -> ImageSpec {
    ImageSpec::new(vec![(layer.to_vec(), how)], json!({"Cmd": [cmd]}))
}

fn a_layer(text: &[u8]) -> Vec<u8> {
    layer_tar(&[dir("etc"), dir("bin"), file("etc/which", text)])
}

fn open(path: &Path) -> Result<Image, ImageError> {
    match detect(path)? {
        Detected::Image(image) => Ok(*image),
        other => panic!("{} detected as {other:?}", path.display()),
    }
}

/// The converted archive's bytes.
fn convert(image: &Image) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("out.cpio");
    image.convert_to(&file).unwrap();
    std::fs::read(file).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn podman_docker_archives_are_images_whichever_layer_path_the_manifest_names() {
    let spec = ImageSpec::new(
        vec![
            (a_layer(b"base\n"), Compression::None),
            (layer_tar(&[file("etc/which", b"top\n")]), Compression::None),
        ],
        json!({"Cmd": ["/bin/true"]}),
    );
    let work = tempfile::tempdir().unwrap();
    let reference = convert(
        &open(&write(
            work.path(),
            "legacy.tar",
            &docker_legacy(&spec).tar(),
        ))
        .unwrap(),
    );
    for via_links in [false, true] {
        let files = docker_podman(&spec, via_links);
        let path = write(work.path(), "podman.tar", &files.tar());
        let image = open(&path).unwrap();
        assert_eq!(
            image.format(),
            ImageFormat::DockerArchive,
            "via links: {via_links}"
        );
        assert_eq!(image.layer_count(), 2);
        assert_eq!(image.config().cmd, ["/bin/true"]);
        let archive = convert(&image);
        assert!(contains(&archive, b"top\n") && !contains(&archive, b"base\n"));
        assert_eq!(archive, reference, "podman's layout converts as docker's");
    }
    // A layer link that leaves the archive, or loops, is no layer.
    let mut files = docker_podman(&spec, true);
    let link = files.symlinks.keys().next().unwrap().clone();
    files
        .symlinks
        .insert(link.clone(), "../../etc/passwd".into());
    let err = open(&write(work.path(), "escape.tar", &files.tar())).unwrap_err();
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
    files.symlinks.insert(link.clone(), "layer.tar".into());
    let err = open(&write(work.path(), "loop.tar", &files.tar())).unwrap_err();
    assert!(err.to_string().contains("links"), "{err}");
}

#[test]
fn a_tag_picks_one_of_several_images_and_without_one_the_tags_are_listed() {
    let one = image(&a_layer(b"one\n"), Compression::Gzip, "one");
    let two = image(&a_layer(b"two\n"), Compression::Zstd, "two");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let files = oci_layout_tagged(&[("1.0", &one), ("2.0", &two)]);
    files.write_to(&layout);
    let archive = write(work.path(), "oci.tar", &files.tar());
    for (path, format) in [
        (&layout, ImageFormat::OciLayout),
        (&archive, ImageFormat::OciArchive),
    ] {
        let err = open(path).unwrap_err().to_string();
        for needle in [
            "2 images",
            "1.0",
            "2.0",
            ":TAG",
            &format!("{}:1.0", path.display()),
        ] {
            assert!(err.contains(needle), "{needle:?} not in: {err}");
        }
        let tagged = |tag: &str| PathBuf::from(format!("{}:{tag}", path.display()));
        let image = open(&tagged("2.0")).unwrap();
        assert_eq!(image.format(), format);
        assert_eq!(image.config().cmd, ["two"]);
        assert!(
            image.description().contains("tag 2.0"),
            "{}",
            image.description()
        );
        assert!(contains(&convert(&image), b"two\n"));
        let err = open(&tagged("3.0")).unwrap_err().to_string();
        assert!(
            err.contains("no image tagged \"3.0\"") && err.contains("1.0, 2.0"),
            "{err}"
        );
    }
    // A path that exists is never split; one that does not, and has no
    // existing prefix, is an error about the whole path.
    let colon = work.path().join("odd:name");
    oci_layout(&one).write_to(&colon);
    assert!(open(&colon).is_ok());
    let err = open(&work.path().join("missing:1.0")).unwrap_err();
    assert!(matches!(err, ImageError::Read { .. }), "{err}");
    // One image, tagged or not: no tag needed; a tag elsewhere is refused.
    let single = work.path().join("single");
    oci_layout_tagged(&[("latest", &one)]).write_to(&single);
    assert!(open(&single).is_ok());
    assert!(open(Path::new(&format!("{}:latest", single.display()))).is_ok());
    let tar = write(work.path(), "root.tar", &a_layer(b"x"));
    let err = detect(Path::new(&format!("{}:latest", tar.display()))).unwrap_err();
    assert!(matches!(err, ImageError::NotTagged { .. }), "{err}");
    assert!(
        err.to_string().contains("without the tag \"latest\""),
        "{err}"
    );
    let err = detect(Path::new(&format!("{}:x", work.path().display()))).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    // docker-archives: by RepoTags, whole or the tag alone.
    let podman = write(work.path(), "podman.tar", &docker_podman(&one, false).tar());
    for tag in [
        "localhost/microrun-test:latest",
        "microrun-test:latest",
        "latest",
    ] {
        assert!(
            open(Path::new(&format!("{}:{tag}", podman.display()))).is_ok(),
            "{tag}"
        );
    }
    let err = open(Path::new(&format!("{}:other", podman.display()))).unwrap_err();
    assert!(matches!(err, ImageError::NoSuchTag { .. }), "{err}");
}

#[test]
fn a_real_multi_platform_index_still_picks_linux_amd64() {
    let amd64 = image(&a_layer(b"amd64\n"), Compression::None, "x");
    let mut arm64 = image(&a_layer(b"arm64\n"), Compression::None, "x");
    arm64.architecture = "arm64";
    let mut files = Files::default();
    let mut manifests = Vec::new();
    for spec in [&arm64, &amd64] {
        let mut manifest = add_image_blobs(&mut files, spec);
        manifest["platform"] = json!({"architecture": spec.architecture, "os": "linux"});
        manifest["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
        manifests.push(manifest);
    }
    let work = tempfile::tempdir().unwrap();
    oci_layout_with(files, manifests).write_to(work.path());
    assert!(contains(&convert(&open(work.path()).unwrap()), b"amd64\n"));
}

#[test]
fn layers_without_the_final_padding_are_read_when_every_entry_is_whole() {
    let layer = a_layer(b"umoci\n");
    let cut = unpadded(&layer);
    assert_ne!(cut.len() % 512, 0);
    let work = tempfile::tempdir().unwrap();
    for how in [Compression::None, Compression::Gzip] {
        let spec = ImageSpec::new(vec![(cut.clone(), how)], json!({}));
        oci_layout(&spec).write_to(&work.path().join("layout"));
        let archive = convert(&open(&work.path().join("layout")).unwrap());
        assert!(contains(&archive, b"umoci\n"), "{how:?}");
        std::fs::remove_dir_all(work.path().join("layout")).unwrap();
    }
    let rootfs = write(work.path(), "root.tar", &cut);
    assert!(contains(&convert(&open(&rootfs).unwrap()), b"umoci\n"));
    // An entry cut short is still an error.
    let truncated = ImageSpec::new(
        vec![(cut[..cut.len() - 2].to_vec(), Compression::Gzip)],
        json!({}),
    );
    oci_layout(&truncated).write_to(&work.path().join("layout"));
    let image = open(&work.path().join("layout")).unwrap();
    let err = image.convert_to(&work.path().join("out.cpio")).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn xz_and_bzip2_tarballs_and_layers_convert() {
    let layer = a_layer(b"compressed\n");
    let work = tempfile::tempdir().unwrap();
    let reference = convert(&open(&write(work.path(), "root.tar", &layer)).unwrap());
    for (how, found) in [
        (Compression::Xz, Found::Xz),
        (Compression::Bzip2, Found::Bzip2),
    ] {
        let path = write(work.path(), "rootfs", &compress(&layer, how));
        let image = open(&path).unwrap();
        assert_eq!(image.format(), ImageFormat::Tar(found));
        assert_eq!(convert(&image), reference, "{how:?}");
        let layout = work.path().join(format!("layout-{how:?}"));
        oci_layout(&image_of(&layer, how)).write_to(&layout);
        assert_eq!(convert(&open(&layout).unwrap()), reference, "{how:?} layer");
    }
}

fn image_of(layer: &[u8], how: Compression) -> ImageSpec {
    ImageSpec::new(vec![(layer.to_vec(), how)], json!({}))
}

#[test]
fn skopeo_dir_layouts_are_images_and_never_packed_as_a_rootfs() {
    let spec = image(&a_layer(b"dir\n"), Compression::Gzip, "from-dir");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    dir_transport(&spec).write_to(&dir);
    let image = open(&dir).unwrap();
    assert_eq!(image.format(), ImageFormat::DirTransport);
    assert_eq!(image.config().cmd, ["from-dir"]);
    assert!(contains(&convert(&image), b"dir\n"));
    // Another version: refused, naming the fix.
    std::fs::write(dir.join("version"), "Directory Transport Version: 2.0\n").unwrap();
    let err = open(&dir).unwrap_err().to_string();
    assert!(err.contains("skopeo copy dir:"), "{err}");
    // A manifest list (skopeo copy --all): refused, naming the fix.
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let err = open(&dir).unwrap_err().to_string();
    assert!(err.contains("skopeo copy dir:"), "{err}");
    // A missing blob is a missing blob.
    dir_transport(&spec).write_to(&dir);
    let blob = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().len() == 64)
        .unwrap();
    std::fs::remove_file(blob).unwrap();
    let err = open(&dir)
        .and_then(|image| image.convert_to(&work.path().join("out.cpio")).map(|_| ()))
        .unwrap_err();
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");
}
