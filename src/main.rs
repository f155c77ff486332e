//! `microrun`: the command line. Everything real happens in the library.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use microrun::engine::qemu::Accel;
use microrun::registry::{PullOptions, PullPolicy};
use microrun::run;
use microrun::spec::{Engine, Request, Verbosity};
use microrun::units::{parse_size, parse_timeout, parse_vcpus};

/// Run a program in a KVM microVM as easily as chroot runs it in a directory.
#[derive(Parser, Debug)]
#[command(
    name = "microrun",
    version,
    // Not `args_conflicts_with_subcommands`: it would take `pull` in
    // `microrun -v pull REF` for a ROOTFS. The global options (-q, -v,
    // --insecure-registry) go before or after a subcommand, as docker's
    // do; `run_options_given` refuses a run's options with one.
    subcommand_negates_reqs = true,
    override_usage = "microrun [OPTIONS] <ROOTFS> [-- <CMD>...]\n       \
                      microrun [-q|-v] [--insecure-registry HOST] <COMMAND>",
    after_help = "Exit status: the program's (0-255; 128+N for signal N), 124 on --timeout, \
                  125 when microrun or the VM failed, 126/127 when the command cannot be run or found."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack a directory into a reproducible newc cpio initrd.
    Pack {
        /// The directory to pack.
        dir: PathBuf,
        /// The archive: a file (replaced atomically), or a FIFO or device such as /dev/stdout (streamed).
        #[arg(short, long)]
        output: PathBuf,
        /// Keep the files' owners instead of making everything root's.
        #[arg(long)]
        keep_owner: bool,
    },
    /// Copy binaries with their ELF interpreter and libraries into a rootfs.
    Rootfs {
        /// The rootfs directory (created when missing).
        dir: PathBuf,
        /// A binary to copy, at the same path (repeatable).
        #[arg(long = "bin", required = true, value_name = "PATH")]
        bins: Vec<PathBuf>,
        /// Make /init a symlink to this binary.
        #[arg(long, value_name = "PATH")]
        init: Option<PathBuf>,
    },
    /// Pull an image from a registry into the cache (alpine:3.20, HOST:PORT/NAME:TAG,
    /// NAME@sha256:...); prints NAME:TAG@DIGEST, the reference pinned to what was pulled.
    Pull {
        /// The image reference (docker's spelling; docker:// allowed).
        reference: String,
    },
    /// List the images pulled into the cache: name, digest, size, last used.
    Images {
        /// Remove the cached blobs no name points to.
        #[arg(long)]
        prune: bool,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A rootfs directory, a cpio initrd, a rootfs tar (plain, gzip, zstd,
    /// xz, bzip2), a docker-archive, an OCI image (layout directory or
    /// archive) or a skopeo dir: layout; PATH:TAG picks a tagged image;
    /// an image reference (alpine:3.20, HOST:PORT/NAME:TAG, NAME@sha256:...,
    /// docker://REF) when no such path exists, pulled from its registry.
    #[arg(required = true)]
    rootfs: Option<PathBuf>,
    /// The command to run instead of /init, looked up in the guest's PATH.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
    /// The kernel to boot [default: the host's kernel, then the project's].
    #[arg(long, env = "MICRORUN_KERNEL", value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Guest memory, e.g. 256M [default: 3 × initrd + 64 MiB; with --root
    /// disk, the kernel + guest-init + 128 MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    mem: Option<u64>,
    /// Number of vCPUs, 1 to 32.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = parse_vcpus)]
    cpus: u8,
    /// Stop the VM after this long (at most 365 days) and exit 124, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Arguments appended to the kernel command line.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Set an environment variable for the command (KEY alone: the host's value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command's working directory in the guest.
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Share a host directory with the guest, read-write, at DST (default: SRC); repeatable.
    #[arg(long = "bind", value_name = "SRC[:DST]")]
    binds: Vec<String>,
    /// Share a host directory with the guest, read-only, at DST (default: SRC); repeatable.
    #[arg(long = "bind-ro", value_name = "SRC[:DST]")]
    binds_ro: Vec<String>,
    /// Run the program as USER (and GROUP): names from the rootfs's own /etc/passwd and
    /// /etc/group, or numbers [default: the image's User, else root].
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Give the guest a network interface with outbound IPv4 (and IPv6) through
    /// passt or pasta (Debian package passt), and DNS; without it the guest has
    /// only loopback.
    #[arg(long)]
    net: bool,
    /// With --net: make the host's loopback reachable from the guest as
    /// host.microrun.internal (the gateway).
    #[arg(long)]
    net_host: bool,
    /// With --net: forward a host port to a guest port, repeatable; HOSTIP
    /// defaults to 127.0.0.1 (docker's is 0.0.0.0).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]"
    )]
    publish: Vec<String>,
    /// Give the program a terminal (a pseudo-terminal as its stdin, stdout
    /// and stderr); with -i, microrun's terminal is in raw mode meanwhile
    /// (Ctrl-] three times within a second stops the VM).
    #[arg(short = 't', long)]
    tty: bool,
    /// Forward stdin to the program, even when it is a terminal (without
    /// -i only a pipe or a file is forwarded).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Boot the initrd as given, without guest-init (its init reports on ttyS2).
    #[arg(long)]
    no_init: bool,
    /// What runs the guest (auto: kvm where KVM can run Linux, else qemu).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    engine: Engine,
    /// The qemu engine's accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// When to ask the registry for an image reference: missing (only when
    /// not cached), always (resolve the tag again), never (offline).
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing, value_name = "WHEN")]
    pull: PullPolicy,
    /// A registry host reached over plain HTTP (besides localhost and
    /// 127.0.0.0/8); repeatable; also MICRORUN_INSECURE_REGISTRIES=H1,H2.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// How a VM gets the rootfs: an initrd unpacked into its memory, or a
    /// read-only disk under a throw-away overlay [default: the disk for
    /// images above 16 MiB unpacked, else the initrd].
    #[arg(long, value_enum, value_name = "initrd|disk")]
    root: Option<microrun::spec::RootChoice>,
    /// Print how long each phase took, on stderr.
    #[arg(long)]
    timings: bool,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Show the kernel log and microrun's progress.
    #[arg(short, long, global = true)]
    verbose: bool,
}

fn main() -> ExitCode {
    let started = Instant::now();
    // Usage errors are microrun failures too (125, as the contract's table
    // has it), not clap's default 2; --help and --version exit 0.
    let cli = match parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            // `microrun: error: ...` like every other failure, clap's hint
            // on the lines after it.
            let text = err.render().to_string();
            microrun::say(format_args!("{}", text.trim_end()));
            microrun::flush_messages(MESSAGE_GRACE);
            return ExitCode::from(125);
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(0);
        }
    };
    let verbosity = match (cli.run.quiet, cli.run.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    microrun::logger::init(verbosity);
    let code = match real_main(cli, verbosity, started) {
        Ok(code) => code,
        Err(err) => {
            microrun::say(format_args!("error: {}", error_chain(&err)));
            125
        }
    };
    // Bounded: a stderr nobody reads must not keep microrun from exiting.
    microrun::flush_messages(MESSAGE_GRACE);
    ExitCode::from(code)
}

/// The command line, with a run's options refused beside a subcommand
/// (`microrun --mem 1G pull REF` would otherwise ignore `--mem`).
fn parse_cli(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    if let Some((name, _)) = matches.subcommand() {
        if let Some(given) = run_options_given(&command, &matches).first() {
            return Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "{given} belongs to a run, not to `microrun {name}`: leave it out \
                     (only -q, -v and --insecure-registry go with a subcommand)"
                ),
            ));
        }
    }
    Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut command))
}

/// The options and arguments of a run (every top-level one but the
/// global ones) given on the command line, as the user spells them.
fn run_options_given(command: &clap::Command, matches: &ArgMatches) -> Vec<String> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_global_set())
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|arg| match (arg.get_long(), arg.get_value_names()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some([name, ..])) => format!("<{name}>"),
            (None, _) => arg.get_id().to_string(),
        })
        .collect()
}

/// How long microrun waits at exit for its last messages to be written.
const MESSAGE_GRACE: Duration = Duration::from_millis(300);

fn real_main(cli: Cli, verbosity: Verbosity, started: Instant) -> anyhow::Result<u8> {
    match cli.command {
        Some(Command::Pack {
            dir,
            output,
            keep_owner,
        }) => {
            let mut opts = initrd_tools::PackOptions::from_env()?;
            opts.keep_owner = keep_owner;
            let stats = initrd_tools::pack_dir(&dir, &output, &opts)?;
            log::info!(
                "packed {} entries, {} bytes into {}",
                stats.entries,
                stats.bytes,
                output.display()
            );
            Ok(0)
        }
        Some(Command::Rootfs { dir, bins, init }) => {
            let report = initrd_tools::rootfs::assemble(&dir, &bins, init.as_deref())?;
            for path in &report.copied {
                log::info!("copied {}", path.display());
            }
            Ok(0)
        }
        Some(Command::Pull { reference }) => {
            let options = PullOptions {
                policy: PullPolicy::Always,
                insecure: cli.run.insecure_registries,
                verbosity,
                convert: false,
                root: None,
                deadline: None,
            };
            let pinned = microrun::registry::pull(&reference, &options)?;
            let _ = writeln!(std::io::stdout().lock(), "{pinned}");
            Ok(0)
        }
        Some(Command::Images { prune }) => {
            let text = if prune {
                microrun::registry::prune()? + "\n"
            } else {
                microrun::registry::list()?
            };
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(0)
        }
        None => run_guest(cli.run, verbosity, started),
    }
}

fn run_guest(args: RunArgs, verbosity: Verbosity, started: Instant) -> anyhow::Result<u8> {
    let Some(path) = args.rootfs else {
        bail!("no ROOTFS given: pass a rootfs directory, a cpio initrd, a tar or an image");
    };
    let pull_options = PullOptions {
        policy: args.pull,
        insecure: args.insecure_registries,
        verbosity,
        convert: true,
        root: args.root,
        deadline: vmm::deadline_after(started, args.timeout),
    };
    let (rootfs, pulled) = match microrun::registry::resolve_rootfs(&path, &pull_options) {
        // --timeout counts from microrun's start, the pull included: 124.
        Err(err) if err.is_timeout() => {
            microrun::say(format_args!("{err}"));
            return Ok(124);
        }
        resolved => resolved?,
    };
    let request = Request {
        rootfs,
        command: args.cmd,
        env: args
            .env
            .iter()
            .map(|e| parse_env(e))
            .collect::<anyhow::Result<_>>()?,
        workdir: args.workdir,
        timeout: args.timeout,
        forward_stdin: args.interactive || stdin_is_data(),
        tty: args.tty,
        stdin_terminal: microrun::terminal::stdin_size(),
        no_init: args.no_init,
        binds: microrun::binds::parse_binds(&args.binds, &args.binds_ro)?,
        verbosity,
        started,
        engine: args.engine,
        kernel: args.kernel,
        mem: args.mem,
        cpus: args.cpus,
        cmdline: args.cmdline,
        accel: args.accel,
        user: args
            .user
            .as_deref()
            .map(|spec| microrun::user::UserSpec::parse(spec, "-u"))
            .transpose()?,
        root: args.root,
        net: microrun::net::Network::from_options(args.net, args.net_host, &args.publish)?,
    };
    let plan = microrun::plan::make(request)?;
    let outcome = run::run(&plan)?;
    if let Some(reason) = &outcome.reason {
        microrun::say(format_args!("{reason}"));
    }
    if args.timings {
        microrun::say_lines(&run::timings_report(plan.engine(), started, &outcome.times));
        if let Some(pulled) = pulled {
            microrun::say(format_args!(
                "  {:<32}{:9.2} ms (within the set-up)",
                "image pull",
                pulled.as_secs_f64() * 1e3
            ));
        }
    }
    Ok(outcome.exit_code)
}

/// Whether stdin is data to forward: a pipe, a file or a socket. A terminal
/// is not forwarded (it is the user's), nor another character device such
/// as /dev/null: a serial port has no end of file, so a program reading
/// forwarded stdin to its end would wait for ever, while /dev/null in the
/// guest ends at once.
fn stdin_is_data() -> bool {
    if std::io::stdin().is_terminal() {
        return false;
    }
    // SAFETY: `stat` is plain data, valid when zeroed, and fstat only
    // writes into it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is only inspected; `stat` is a valid out-pointer.
    if unsafe { libc::fstat(0, &mut stat) } != 0 {
        return false;
    }
    matches!(
        stat.st_mode & libc::S_IFMT,
        libc::S_IFIFO | libc::S_IFREG | libc::S_IFSOCK
    )
}

/// `KEY=VALUE`, or `KEY` alone for the host's value of KEY.
fn parse_env(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = match text.split_once('=') {
        Some((k, v)) => (k, v.to_string()),
        None => (
            text,
            std::env::var(text).with_context(|| {
                format!("--env {text}: not set on the host; write --env {text}=VALUE")
            })?,
        ),
    };
    if key.is_empty() || key.contains('\0') {
        bail!("--env {text:?}: the variable name is empty or invalid; write --env KEY=VALUE");
    }
    Ok((key.to_string(), value))
}

/// The error and its causes, `: `-separated, leaving out a cause whose text
/// the message before it already carries (most of microrun's errors name
/// their cause themselves).
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
