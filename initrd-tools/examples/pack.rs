//! `pack [--erofs] <DIR> <FILE>`: packs a tree with `SOURCE_DATE_EPOCH`
//! honoured, as a newc archive or (with `--erofs`) an EROFS image, for
//! `scripts/bench-pack`. Exit code 125 on error.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (erofs, dir, out) = match args.as_slice() {
        [_, flag, dir, out] if flag == "--erofs" => (true, dir, out),
        [_, dir, out] => (false, dir, out),
        _ => {
            eprintln!("usage: pack [--erofs] <DIR> <FILE>");
            return ExitCode::from(125);
        }
    };
    let (dir, out) = (Path::new(dir), Path::new(out));
    let result = initrd_tools::PackOptions::from_env()
        .map_err(initrd_tools::erofs::ErofsError::from)
        .and_then(|opts| {
            if erofs {
                initrd_tools::erofs::pack_dir(dir, out, &opts)
            } else {
                Ok(initrd_tools::pack_dir(dir, out, &opts)?)
            }
        });
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
