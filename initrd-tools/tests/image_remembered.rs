//! An image file opened before and unchanged since is not read again: its
//! opening is looked up by the file's metadata (issue 27). One test in its
//! own binary, since it sets `XDG_CACHE_HOME`.

mod images;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use images::*;
use initrd_tools::image::{detect, Detected, Image};
use serde_json::json;

fn open(path: &Path) -> Image {
    match detect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        Detected::Image(image) => *image,
        other => panic!("{} detected as {other:?}", path.display()),
    }
}

fn image_with_cmd(cmd: &str) -> Vec<u8> {
    let spec = ImageSpec::new(
        vec![(
            layer_tar(&[dir("bin"), file("bin/tool", b"#!/bin/sh\n")]),
            Compression::None,
        )],
        json!({"Cmd": [cmd], "Env": ["PATH=/bin"]}),
    );
    docker_legacy(&spec).tar()
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

fn converted(image: &Image, out: &Path) -> Vec<u8> {
    image.convert_to(out).unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn an_unchanged_image_file_is_not_read_again_and_a_changed_one_is() {
    let cache_home = private_cache_home();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("image.tar");
    std::fs::write(&path, image_with_cmd("/bin/first")).unwrap();

    // Just written: opened, not remembered (a rewrite within the same tick
    // of the file system's clock would keep its metadata).
    assert_eq!(open(&path).config().cmd, ["/bin/first"]);
    assert!(entries(cache_home.path()).is_empty());
    std::thread::sleep(Duration::from_millis(2100));
    let fresh = open(&path);
    let [entry] = <[PathBuf; 1]>::try_from(entries(cache_home.path())).unwrap();

    // Remembered: what the entry says is believed while the file's
    // metadata holds, so the archive is not read for it.
    let text = std::fs::read_to_string(&entry).unwrap();
    std::fs::write(&entry, text.replace("/bin/first", "/bin/believed")).unwrap();
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
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        .unwrap();
    drop(file);
    assert_eq!(open(&path).config().cmd, ["/bin/first"]);
    // Rewritten in place with another image: its own configuration.
    std::fs::write(&path, image_with_cmd("/bin/second")).unwrap();
    assert_eq!(open(&path).config().cmd, ["/bin/second"]);
}
