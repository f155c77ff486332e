//! The packed-tree cache. One test in its own process, because it sets
//! `XDG_CACHE_HOME`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use initrd_tools::{cache_dir, cached_pack, pack_dir_to, PackOptions, CACHE_KEEP};

#[test]
fn unchanged_tree_is_not_repacked_and_cache_is_bounded() {
    let cache_home = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_CACHE_HOME", cache_home.path());
    assert_eq!(cache_dir().unwrap(), cache_home.path().join("microrun"));

    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("file"), b"one").unwrap();
    let opts = PackOptions::default();

    let first = cached_pack(&tree, &opts).unwrap();
    assert!(first.starts_with(cache_home.path().join("microrun")));
    // Private: the directories 0700, the archive 0600.
    let mode = |path: &std::path::Path| fs::metadata(path).unwrap().mode() & 0o7777;
    assert_eq!(mode(&first), 0o600);
    assert_eq!(mode(first.parent().unwrap()), 0o700);
    assert_eq!(mode(&cache_home.path().join("microrun")), 0o700);
    let mut expected = Vec::new();
    pack_dir_to(&tree, &mut expected, &opts).unwrap();
    assert_eq!(fs::read(&first).unwrap(), expected);
    let inode = fs::metadata(&first).unwrap().ino();

    // Unchanged: same file, not rewritten (a repack would rename a new
    // inode into place).
    let again = cached_pack(&tree, &opts).unwrap();
    assert_eq!(again, first);
    assert_eq!(fs::metadata(&again).unwrap().ino(), inode);

    // Other options: another archive.
    let with_epoch = PackOptions { mtime: 42, ..opts };
    assert_ne!(cached_pack(&tree, &with_epoch).unwrap(), first);

    // Changed contents: another archive, with the new contents.
    fs::write(tree.join("file"), b"two").unwrap();
    let changed = cached_pack(&tree, &opts).unwrap();
    assert_ne!(changed, first);
    let mut expected = Vec::new();
    pack_dir_to(&tree, &mut expected, &opts).unwrap();
    assert_eq!(fs::read(&changed).unwrap(), expected);

    // Many trees: the cache keeps only the newest CACHE_KEEP archives (and
    // any used in the last minute, so the older ones are aged here), and
    // the newest is always there.
    let mut last = changed;
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..CACHE_KEEP + 3 {
        fs::write(tree.join("file"), format!("version {i}")).unwrap();
        last = cached_pack(&tree, &opts).unwrap();
        let age = std::time::Duration::from_secs(i as u64);
        for entry in fs::read_dir(last.parent().unwrap()).unwrap() {
            let path = entry.unwrap().path();
            if path != last && fs::metadata(&path).unwrap().modified().unwrap() > long_ago + age {
                fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(long_ago + age)
                    .unwrap();
            }
        }
    }
    assert!(last.exists());
    let archives = fs::read_dir(last.parent().unwrap()).unwrap().count();
    assert_eq!(archives, CACHE_KEEP);

    // An archive of an older version, 0644: a hit, made 0600.
    fs::set_permissions(&last, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(cached_pack(&tree, &opts).unwrap(), last);
    assert_eq!(mode(&last), 0o600);

    // A FIFO planted where the archive is: refused at once, naming it.
    fs::remove_file(&last).unwrap();
    let name = std::ffi::CString::new(last.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let err = cached_pack(&tree, &opts).unwrap_err().to_string();
    assert!(
        err.contains(&*last.to_string_lossy()) && err.contains("a FIFO"),
        "{err}"
    );
    fs::remove_file(&last).unwrap();

    // An archive of another user's (made so as root): refused, naming it
    // and the fix.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let planted = cached_pack(&tree, &opts).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), None).unwrap();
        let err = cached_pack(&tree, &opts).unwrap_err().to_string();
        assert!(
            err.contains(&*planted.to_string_lossy()) && err.contains("uid 65534"),
            "{err}"
        );
        std::os::unix::fs::chown(planted.parent().unwrap(), Some(65534), None).unwrap();
        let err = cached_pack(&tree, &opts).unwrap_err().to_string();
        assert!(
            err.contains("cache directory") && err.contains("XDG_CACHE_HOME"),
            "{err}"
        );
    }

    // A cache inside the tree is refused.
    std::env::set_var("XDG_CACHE_HOME", tree.join("cache"));
    let err = cached_pack(&tree, &opts).unwrap_err();
    assert!(err.to_string().contains("XDG_CACHE_HOME"), "{err}");
}
