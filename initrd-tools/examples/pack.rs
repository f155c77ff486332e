//! `pack <DIR> <FILE>`: packs a tree with `SOURCE_DATE_EPOCH` honoured, for
//! `scripts/bench-pack` until `microrun pack` exists. Exit code 125 on error.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, out] = args.as_slice() else {
        eprintln!("usage: pack <DIR> <FILE>");
        return ExitCode::from(125);
    };
    let result = initrd_tools::PackOptions::from_env()
        .and_then(|opts| initrd_tools::pack_dir(Path::new(dir), Path::new(out), &opts));
    match result {
        Ok(stats) => {
            eprintln!("{} entries, {} bytes", stats.entries, stats.bytes);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(125)
        }
    }
}
