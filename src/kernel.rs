//! Which kernel to boot: the contract's discovery order, with errors that
//! say where microrun looked and how to get a kernel.

use std::path::{Path, PathBuf};

/// Why no kernel could be used.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel the user named cannot be opened.
    #[error("cannot read kernel {path}: {source}{hint}")]
    Named {
        /// The path from `--kernel` or `MICRORUN_KERNEL`.
        path: PathBuf,
        /// The open error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Discovery found nothing usable.
    #[error("no usable kernel found; looked at:\n{searched}\nfix: pass --kernel PATH (or set MICRORUN_KERNEL), or build the project's minimal kernel with scripts/build-kernel")]
    NotFound {
        /// One line per place searched, with what was wrong there.
        searched: String,
    },
}

const ROOT_ONLY_HINT: &str = " (some distributions, Ubuntu among them, install /boot/vmlinuz-* readable by root only: \
     run `sudo chmod 0644 <path>`, pass another kernel with --kernel, or build one with scripts/build-kernel)";

/// The candidates after an explicit choice, in the contract's order.
pub fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(release) = kernel_release() {
        out.push(PathBuf::from(format!("/boot/vmlinuz-{release}")));
    }
    out.push(PathBuf::from("/boot/vmlinuz"));
    out.push(PathBuf::from("/vmlinuz"));
    if let Ok(cache) = initrd_tools::cache_dir() {
        out.push(project_kernel(&cache));
    }
    out
}

/// Where `scripts/build-kernel` leaves the project's kernel.
pub fn project_kernel(cache: &Path) -> PathBuf {
    cache.join("kernels/default/bzImage")
}

/// Picks the kernel: `explicit` (from `--kernel` or `MICRORUN_KERNEL`)
/// when given, else the first readable candidate.
pub fn discover(explicit: Option<&Path>) -> Result<PathBuf, KernelError> {
    if let Some(path) = explicit {
        return match vmm::regular_file::open(path) {
            Ok(_) => Ok(path.to_path_buf()),
            Err(source) => {
                let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
                    ROOT_ONLY_HINT
                } else {
                    ""
                };
                Err(KernelError::Named {
                    path: path.to_path_buf(),
                    source,
                    hint,
                })
            }
        };
    }
    let mut searched = String::new();
    for candidate in default_candidates() {
        match vmm::regular_file::open(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                searched.push_str(&format!("  {}: not found\n", candidate.display()));
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (readable by root only? `sudo chmod 0644` it)"
                } else {
                    ""
                };
                searched.push_str(&format!("  {}: {e}{hint}\n", candidate.display()));
            }
        }
    }
    Err(KernelError::NotFound {
        searched: searched.trim_end().to_string(),
    })
}

fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_kernel_names_the_path() {
        let err = discover(Some(Path::new("/nonexistent/vmlinuz"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinuz"), "{err}");
    }

    #[test]
    fn a_directory_is_not_a_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let err = discover(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let named = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(discover(Some(&named)).map_err(|e| e.to_string()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("discover blocked opening a FIFO");
        let err = result.unwrap_err();
        assert!(
            err.contains(fifo.to_str().unwrap()) && err.contains("a FIFO, not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn explicit_kernel_is_taken_as_is() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(discover(Some(file.path())).unwrap(), file.path());
    }

    #[test]
    fn candidates_follow_the_contract_order() {
        let c = default_candidates();
        let boot = c
            .iter()
            .position(|p| p == Path::new("/boot/vmlinuz"))
            .unwrap();
        let root = c.iter().position(|p| p == Path::new("/vmlinuz")).unwrap();
        assert!(boot < root);
        assert!(c[0].to_string_lossy().starts_with("/boot/vmlinuz-"));
        assert!(c.last().unwrap().ends_with("kernels/default/bzImage"));
    }
}
