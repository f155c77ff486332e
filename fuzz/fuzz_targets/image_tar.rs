//! Container images and rootfs tars (`initrd_tools::image`) on arbitrary
//! bytes: the input is a ROOTFS file, detected by content (a tar, plain,
//! gzip, zstd, xz or bzip2; a docker-archive, podman's with `<hex>.tar`
//! layers and links between members too; an OCI archive; a cpio) and,
//! when it is an image, converted; then detected again as `FILE:latest`,
//! which picks a tag among its images. That drives the bounded tar reader (headers,
//! checksums, GNU long names and links, PAX records, GNU sparse maps),
//! the decompressors, the image archive scan and its metadata, the layer
//! rules and the archive writer. Besides "no crash" (and no allocation
//! past libFuzzer's malloc limit), it checks that:
//!
//! - every error message is short (names in it are cut), so the reason is
//!   never lost after a huge name;
//! - a failed conversion leaves nothing behind;
//! - a converted archive reads back, every path in it one a file can have
//!   (at most PATH_MAX bytes, components at most NAME_MAX, no NUL).
//!
//! Each input gets its own temporary directory, removed after it; files
//! the process writes are limited to 64 MiB (`RLIMIT_FSIZE`, `SIGXFSZ`
//! ignored, so a larger write is an error of the conversion), and inputs
//! holding a compressed stream that expands past 4 MiB are skipped, so a
//! run's disk and time stay bounded.

#![no_main]

use std::io::{self, Read};
use std::sync::Once;

use initrd_tools::image::{detect, Detected};
use libfuzzer_sys::fuzz_target;

/// The most a compressed stream in the input may expand to.
const MAX_EXPANDED: u64 = 4 << 20;
/// The most compressed streams an input may start.
const MAX_STREAMS: usize = 8;
/// The longest error message accepted.
const MAX_MESSAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    static LIMITS: Once = Once::new();
    LIMITS.call_once(limit_file_size);
    if expands_too_far(data) {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let input = dir.path().join("rootfs");
    std::fs::write(&input, data).expect("write the input");
    let out = dir.path().join("out.cpio");
    let result = detect(&input).and_then(|detected| match detected {
        Detected::Image(image) => image.convert_to(&out).map(Some),
        Detected::Cpio | Detected::Directory => Ok(None),
    });
    // `PATH:TAG`: the tag picked among the images' tags, or an error.
    if let Err(e) = detect(&dir.path().join("rootfs:latest")) {
        assert!(e.to_string().len() <= MAX_MESSAGE, "a long message: {e}");
    }
    match result {
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.len() <= MAX_MESSAGE,
                "a message of {} bytes: {}...",
                message.len(),
                &message[..message.floor_char_boundary(1000)]
            );
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["rootfs"], "a failed conversion left files behind");
        }
        Ok(None) => {}
        Ok(Some(stats)) => {
            let archive = std::fs::read(&out).expect("read the archive");
            assert_eq!(archive.len() as u64, stats.bytes);
            for name in newc_names(&archive) {
                let shown = String::from_utf8_lossy(name);
                assert!(name.len() <= 4095, "a path of {} bytes", name.len());
                assert!(!name.contains(&0), "a NUL in {shown:?}");
                assert!(
                    name.split(|&b| b == b'/').all(|c| c.len() <= 255),
                    "a component over NAME_MAX in {shown:?}"
                );
            }
        }
    }
});

/// The member names of the newc archive `archive`, which must be well
/// formed up to its trailer. (Read here: `initrd_tools::extract` takes
/// only UTF-8 names, and a converted image may have others, as the kernel
/// does.)
fn newc_names(archive: &[u8]) -> Vec<&[u8]> {
    let field = |header: &[u8], index: usize| {
        let hex = std::str::from_utf8(&header[6 + 8 * index..14 + 8 * index]).unwrap();
        usize::from_str_radix(hex, 16).expect("a hex header field")
    };
    let mut names = Vec::new();
    let mut at = 0;
    loop {
        let header = &archive[at..at + 110];
        assert_eq!(&header[..6], b"070701", "a newc header at {at}");
        let (size, name_size) = (field(header, 6), field(header, 11));
        let name = &archive[at + 110..at + 110 + name_size];
        let name = name.strip_suffix(&[0]).expect("a NUL-terminated name");
        if name == b"TRAILER!!!" {
            return names;
        }
        names.push(name);
        at = (at + 110 + name_size).next_multiple_of(4);
        at = (at + size).next_multiple_of(4);
    }
}

/// Files written by this process end at 64 MiB: a write past it fails
/// (EFBIG) instead of killing the process.
fn limit_file_size() {
    let limit = libc::rlimit {
        rlim_cur: 64 << 20,
        rlim_max: 64 << 20,
    };
    // SAFETY: plain calls with a valid rlimit; SIG_IGN for SIGXFSZ.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Whether a gzip, zstd, xz or bzip2 stream starts anywhere in `data` (where an
/// image's layer may be) and expands past [`MAX_EXPANDED`], or more than
/// [`MAX_STREAMS`] start: converting such an input would take too long,
/// and finds nothing that a smaller one does not.
fn expands_too_far(data: &[u8]) -> bool {
    let mut streams = 0;
    for at in 0..data.len() {
        let rest = &data[at..];
        let decoder: Box<dyn Read> = if rest.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(rest))
        } else if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            match zstd::stream::read::Decoder::new(rest) {
                Ok(decoder) => Box::new(decoder),
                Err(_) => continue,
            }
        } else if rest.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Box::new(liblzma::read::XzDecoder::new_multi_decoder(rest))
        } else if rest.starts_with(b"BZh") {
            Box::new(bzip2::read::MultiBzDecoder::new(rest))
        } else {
            continue;
        };
        streams += 1;
        if streams > MAX_STREAMS || expanded_len(decoder) > MAX_EXPANDED {
            return true;
        }
    }
    false
}

/// How much `reader` gives before it ends or fails (counting stops past
/// [`MAX_EXPANDED`]).
fn expanded_len(mut reader: impl Read) -> u64 {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    while total <= MAX_EXPANDED {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    total
}
