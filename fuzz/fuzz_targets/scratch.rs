//! The scratch directory of a fuzz target that needs files: one per
//! fuzzer process, made on first use and removed when the process exits.
//! Included by the targets with `#[path]` (a module, not a target).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `microrun-fuzz-NAME-PID` in the temporary directory: made empty and
/// handed to `fill` on the first call, the same directory after.
pub fn dir(name: &str, fill: impl FnOnce(&Path)) -> &'static Path {
    DIR.get_or_init(|| {
        // SAFETY: registers a plain function to run at exit; it only
        // removes the directory made here.
        unsafe { libc::atexit(remove_scratch) };
        let dir = std::env::temp_dir().join(format!("microrun-fuzz-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        fill(&dir);
        dir
    })
}
