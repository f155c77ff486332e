//! The host's modules for the guest: resolved with their dependencies from
//! `/lib/modules/<release>`, checked, read and decompressed, each with the
//! metadata the plan cache checks.

use std::path::{Path, PathBuf};

use initrd_tools::modules::{ModuleFile, ModuleTree, ModulesError};

use super::GuestModule;

/// Where a module's bytes came from, as the cache checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ModuleSource {
    /// The file on the host.
    pub path: PathBuf,
    /// Its metadata ([`super::cache::stat_line`]) before it was read.
    pub stat: String,
}

/// The modules `wanted` and what they need, from `<parent>/<release>`, in
/// load order, read; the module named `params.0` gets the parameters
/// `params.1`. Or why not.
pub(super) fn read(
    parent: &Path,
    release: &str,
    wanted: &[&str],
    params: (&str, &str),
) -> Result<Vec<(GuestModule, ModuleSource)>, String> {
    let tree = ModuleTree::for_release_under(parent, release).map_err(|e| e.to_string())?;
    tree.resolve(wanted)
        .map_err(|e| e.to_string())?
        .iter()
        .map(|file| guest_module(file, params))
        .collect()
}

fn guest_module(
    file: &ModuleFile,
    (params_for, params): (&str, &str),
) -> Result<(GuestModule, ModuleSource), String> {
    // The name becomes part of a path in the initrd and of a run-config
    // record; modules.dep is untrusted.
    if !is_plain_module_name(&file.name) {
        return Err(format!(
            "{} has a module name ({:?}) that is not a plain file name",
            file.path.display(),
            file.name
        ));
    }
    // Taken before reading: a file that changes meanwhile misses next time.
    let source = ModuleSource {
        path: file.path.clone(),
        stat: super::cache::stat_line(&file.path),
    };
    let module = GuestModule {
        file_name: file.file_name(),
        bytes: file.read().map_err(|e: ModulesError| e.to_string())?,
        params: if file.name == params_for {
            params.to_string()
        } else {
            String::new()
        },
    };
    Ok((module, source))
}

/// Whether `name` is 1 to 64 characters from `[A-Za-z0-9_.+-]`, not
/// starting with a dot: a safe file name (module names are `[a-z0-9_]`).
fn is_plain_module_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
}
