use super::*;

/// A header of `kind` for `name` (up to 100 bytes) claiming `size` bytes.
fn header(kind: u8, name: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_size(size);
    header.set_mode(0o644);
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    *header.as_bytes()
}

/// `data` padded to whole blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(512) * 512, 0);
    out
}

/// An entry: its header, then its data padded.
fn member(kind: u8, name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = header(kind, name, data.len() as u64).to_vec();
    out.extend(padded(data));
    out
}

/// One PAX record, its length computed.
fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len += 1;
    }
    [len.to_string().as_bytes(), &body].concat()
}

fn end() -> Vec<u8> {
    vec![0; 1024]
}

/// An entry as read: its path, link and data.
type Member = (String, Option<String>, Vec<u8>);

/// Every entry's path, link and data.
fn read_all(bytes: &[u8]) -> Result<Vec<Member>, TarError> {
    let mut reader = TarReader::new(Stream(bytes));
    let mut out = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        let mut data = Vec::new();
        reader.data(&entry).read_to_end(&mut data).unwrap();
        assert_eq!(data.len() as u64, entry.size);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        out.push((text(&entry.path), entry.link.as_deref().map(text), data));
    }
    Ok(out)
}

#[test]
fn entries_of_the_tar_crates_archives_read_back_in_either_mode() {
    let long = "d/".repeat(80) + "file";
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    builder.append_data(&mut h, &long, &b"hello"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    builder.append_link(&mut h, "link", &long).unwrap();
    builder
        .append_pax_extensions([("path", &b"pax\nname"[..]), ("mtime", b"7")])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    builder.append_data(&mut h, "short", &b"abc"[..]).unwrap();
    let bytes = builder.into_inner().unwrap();
    let expected = vec![
        (long.clone(), None, b"hello".to_vec()),
        ("link".to_string(), Some(long.clone()), Vec::new()),
        ("pax\nname".to_string(), None, b"abc".to_vec()),
    ];
    assert_eq!(read_all(&bytes).unwrap(), expected);

    // Seeking over data gives the same entries and positions.
    let mut reader = TarReader::new(Seekable(io::Cursor::new(&bytes)));
    let mut names = Vec::new();
    while let Some(entry) = reader.next_entry().unwrap() {
        let at = entry.data_pos as usize;
        assert_eq!(
            &bytes[at..at + entry.size as usize],
            &expected[names.len()].2[..]
        );
        names.push(entry.path);
    }
    assert_eq!(names.len(), 3);
}

#[test]
fn oversized_headers_are_refused_before_they_are_read() {
    // Each claims 1 GiB and 1 byte, and has 512 bytes: the error is the
    // limit, not the end of the stream, so nothing was read first.
    for (kind, what) in [
        (b'L', "GNU long name"),
        (b'K', "GNU long link name"),
        (b'x', "PAX extended header"),
        (b'g', "PAX global header"),
    ] {
        let mut bytes = header(kind, "././@LongLink", (1 << 30) + 1).to_vec();
        bytes.extend([b'a'; 512]);
        let err = read_all(&bytes).unwrap_err();
        assert!(
            matches!(err, TarError::TooLarge { size, offset: 0, .. } if size == (1 << 30) + 1),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(what) && text.contains("1 MiB"), "{text}");
    }
    // At the limit: accepted.
    let name = "n".repeat(MAX_EXTENSION as usize - 1);
    let mut bytes = member(b'L', "././@LongLink", format!("{name}\0").as_bytes());
    bytes.extend(member(b'0', "x", b"1"));
    bytes.extend(end());
    assert_eq!(read_all(&bytes).unwrap()[0].0.len(), name.len());
    let mut bytes = member(b'L', "././@LongLink", format!("{name}ab").as_bytes());
    bytes.extend(member(b'0', "x", b"1"));
    assert!(matches!(
        read_all(&bytes).unwrap_err(),
        TarError::TooLarge { .. }
    ));
}

#[test]
fn pax_records_are_parsed_by_their_lengths() {
    let records = [
        record("path", b"a\nb"),
        record("size", b"300"),
        record("uid", b"7"),
    ]
    .concat();
    let mut bytes = member(b'x', "pax", &records);
    let mut file = header(b'0', "ignored", 3).to_vec();
    file.extend(padded(&[5; 300]));
    bytes.extend(file);
    bytes.extend(end());
    let mut reader = TarReader::new(Stream(&bytes[..]));
    let entry = reader.next_entry().unwrap().unwrap();
    assert_eq!(entry.path, b"a\nb");
    assert_eq!(entry.size, 300, "PAX size replaces the header's");
    assert_eq!(entry.pax_number("uid"), Some(7));
    assert_eq!(entry.pax_number("path"), None);
    assert!(reader.next_entry().unwrap().is_none());

    for bad in [
        &b"5 a=b\n"[..],
        b"x path=a\n",
        b"99 path=a\n",
        b"9 patha\n\n",
    ] {
        let mut bytes = member(b'x', "pax", bad);
        bytes.extend(member(b'0', "f", b""));
        let err = read_all(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("malformed record"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn broken_streams_are_errors_never_panics() {
    let mut good = member(b'0', "f", b"data");
    good.extend(end());
    let mut bad_sum = good.clone();
    bad_sum[0] = b'g';
    assert!(read_all(&bad_sum)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    // Cut in a header, in the data of a skipped entry, after an extension.
    let err = read_all(&good[..100]).unwrap_err();
    assert!(matches!(err, TarError::Truncated { .. }), "{err}");
    let mut reader = TarReader::new(Stream(&good[..515]));
    reader.next_entry().unwrap().unwrap();
    let err = reader.next_entry().unwrap_err();
    assert!(matches!(err, TarError::Truncated { .. }), "{err}");
    assert!(
        reader.next_entry().unwrap().is_none(),
        "done after an error"
    );
    let mut dangling = member(b'L', "././@LongLink", b"name\0");
    dangling.extend(end());
    let err = read_all(&dangling).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let mut twice = member(b'L', "././@LongLink", b"a\0");
    twice.extend(member(b'L', "././@LongLink", b"b\0"));
    twice.extend(member(b'0', "f", b""));
    assert!(read_all(&twice).unwrap_err().to_string().contains("second"));
    // A size that overflows.
    let mut huge = tar::Header::new_gnu();
    huge.as_gnu_mut().unwrap().size = [
        0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    huge.set_cksum();
    let err = read_all(huge.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
    // A stream of zeros is an empty archive, and so is nothing at all.
    assert!(read_all(&end()).unwrap().is_empty());
    assert!(read_all(b"").unwrap().is_empty());
}

/// A GNU sparse header for `name`: `runs` (offset, length) in the header
/// (up to 4) and then in extension blocks of 21, `stored` bytes of data,
/// `real` bytes in all.
fn sparse(name: &str, runs: &[(u64, u64)], real: u64) -> Vec<u8> {
    let stored: u64 = runs.iter().map(|r| r.1).sum();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_size(stored);
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    let gnu = header.as_gnu_mut().unwrap();
    gnu.realsize
        .copy_from_slice(format!("{real:011o}\0").as_bytes());
    let (first, rest) = runs.split_at(runs.len().min(4));
    for (slot, run) in gnu.sparse.iter_mut().zip(first) {
        slot.set_offset(run.0);
        slot.set_length(run.1);
    }
    gnu.isextended[0] = u8::from(!rest.is_empty());
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, run) in ext.sparse.iter_mut().zip(chunk.iter()) {
            slot.set_offset(run.0);
            slot.set_length(run.1);
        }
        ext.isextended[0] = u8::from(i + 1 < chunks.len());
        out.extend(ext.as_bytes());
    }
    let data: Vec<u8> = (0..stored).map(|i| (i % 250) as u8 + 1).collect();
    out.extend(padded(&data));
    out
}

#[test]
fn gnu_sparse_files_are_expanded() {
    // Runs of whole blocks, one past the header's four (an extension
    // block), and a hole at the end (an empty last run).
    let runs = [
        (0, 512),
        (2048, 1024),
        (8192, 512),
        (9000, 512),
        (20000, 512),
        (30000, 0),
    ];
    let mut bytes = sparse("s", &runs, 30000);
    bytes.extend(member(b'0', "after", b"x"));
    bytes.extend(end());
    let entries = read_all(&bytes).unwrap();
    assert_eq!(entries.len(), 2);
    let data = &entries[0].2;
    assert_eq!(data.len(), 30000);
    let mut stored = 0u64;
    let mut expected = vec![0u8; 30000];
    for (at, len) in runs {
        for i in 0..len {
            expected[(at + i) as usize] = (stored % 250) as u8 + 1;
            stored += 1;
        }
    }
    assert!(data == &expected);
    assert_eq!(entries[1].0, "after");

    for (runs, real, why) in [
        (&[(1000, 512), (50, 512)][..], 562, "out of order"),
        (&[(0, 10), (100, 10)][..], 110, "block boundary"),
        (&[(0, 512)][..], 9999, "do not end"),
    ] {
        let mut bytes = sparse("s", runs, real);
        bytes.extend(end());
        let err = read_all(&bytes).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    // More than 1 MiB of extension blocks: refused as they are read.
    let many: Vec<(u64, u64)> = (0..4 + 21 * 2049).map(|i| (i, 0)).collect();
    let err = read_all(&sparse("s", &many, 4 + 21 * 2049 - 1)).unwrap_err();
    assert!(matches!(err, TarError::TooLarge { .. }), "{err}");
}

#[test]
fn global_headers_are_skipped_and_trailing_nuls_trimmed() {
    let mut bytes = member(b'g', "pax_global_header", &record("a", b"bcd"));
    bytes.extend(member(b'K', "././@LongLink", b"target\0\0"));
    bytes.extend(header(b'2', "l", 0));
    bytes.extend(end());
    let entries = read_all(&bytes).unwrap();
    assert_eq!(
        entries,
        [("l".to_string(), Some("target".to_string()), Vec::new())]
    );
    // A global header alone is an empty archive.
    let mut bytes = member(b'g', "pax_global_header", &record("a", b"bcd"));
    bytes.extend(end());
    assert!(read_all(&bytes).unwrap().is_empty());
}

#[test]
fn an_archive_may_end_after_complete_data_without_padding_or_end_blocks() {
    // As umoci's `insert` writes a layer: the last entry's data, then
    // nothing (no padding to a whole block, no zero blocks).
    let mut archive = member(b'0', "a", b"first");
    archive.extend(header(b'0', "b", 5));
    archive.extend(b"hello");
    let expected = vec![
        ("a".to_string(), None, b"first".to_vec()),
        ("b".to_string(), None, b"hello".to_vec()),
    ];
    assert_eq!(read_all(&archive).unwrap(), expected);
    // Padding in part, padding whole without end blocks, a directory last.
    archive.extend([0; 100]);
    assert_eq!(read_all(&archive).unwrap(), expected);
    archive.resize(2048, 0);
    assert_eq!(read_all(&archive).unwrap(), expected);
    let mut dir_last = member(b'0', "a", b"first");
    dir_last.extend(header(b'5', "d/", 0));
    assert_eq!(read_all(&dir_last).unwrap().len(), 2);
    // Seeking over the data (an uncompressed layer) reads the same.
    let mut unpadded = member(b'0', "a", b"first");
    unpadded.extend(header(b'0', "b", 5));
    unpadded.extend(b"hello");
    let mut reader = TarReader::new(Seekable(io::Cursor::new(&unpadded)));
    let mut names = Vec::new();
    while let Some(entry) = reader.next_entry().unwrap() {
        names.push(entry.path);
    }
    assert_eq!(names, [b"a".to_vec(), b"b".to_vec()]);

    // Data cut short is still an error, skipped or read, and so is an
    // extension header whose entry never comes.
    let cut = &unpadded[..unpadded.len() - 1];
    let mut reader = TarReader::new(Stream(cut));
    reader.next_entry().unwrap().unwrap();
    reader.next_entry().unwrap().unwrap();
    let err = reader.next_entry().unwrap_err();
    assert!(matches!(err, TarError::Truncated { .. }), "{err}");
    let mut reader = TarReader::new(Stream(cut));
    while let Ok(Some(entry)) = reader.next_entry() {
        let mut data = Vec::new();
        reader.data(&entry).read_to_end(&mut data).unwrap();
        if entry.path == b"b" {
            assert_eq!(data, b"hell", "the stream ends inside the data");
        }
    }
    let mut name_only = member(b'0', "a", b"first");
    name_only.extend(header(b'L', "././@LongLink", 5));
    name_only.extend(b"name\0");
    let err = read_all(&name_only).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}
