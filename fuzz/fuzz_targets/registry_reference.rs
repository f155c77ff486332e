//! Image references (`microrun::registry::reference::Reference::parse`),
//! which take any ROOTFS text that names no file: no panic, and a parsed
//! reference is normalised for good (its own text parses to itself).

#![no_main]

use libfuzzer_sys::fuzz_target;
use microrun::registry::reference::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Reference::parse(text) {
        Ok(reference) => {
            let shown = reference.to_string();
            let again = Reference::parse(&shown)
                .unwrap_or_else(|e| panic!("{text:?} gave {shown:?}, which does not parse: {e}"));
            assert_eq!(again, reference, "{text:?} -> {shown:?}");
            assert!(!reference.repository.is_empty() && !reference.registry.is_empty());
        }
        Err(e) => assert!(
            e.to_string().len() <= 4096,
            "{text:?}: an unbounded message"
        ),
    }
});
