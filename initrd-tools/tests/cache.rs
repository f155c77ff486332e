//! The packed-tree cache. One test in its own process, because it sets
//! `XDG_CACHE_HOME`.

use std::fs;
use std::os::unix::fs::MetadataExt;

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

    // A cache inside the tree is refused.
    std::env::set_var("XDG_CACHE_HOME", tree.join("cache"));
    let err = cached_pack(&tree, &opts).unwrap_err();
    assert!(err.to_string().contains("XDG_CACHE_HOME"), "{err}");
}
