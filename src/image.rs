//! An image's configuration as the run's defaults, exactly as `docker run`
//! takes them:
//!
//! - the command is `Entrypoint` followed by `Cmd`; arguments after
//!   `--` replace `Cmd` and keep `Entrypoint` (microrun has no
//!   `--entrypoint`); with neither, the rootfs's `/init` runs, as for
//!   any rootfs;
//! - `Env` comes first, and `-e NAME=value` replaces a variable of the same
//!   name where the image put it, or is added after;
//! - `WorkingDir` is the directory unless `-w` is given;
//! - `User` is who the command runs as unless `-u` is given (an empty
//!   `User` is root, as in docker).

use initrd_tools::image::ImageConfig;

use crate::spec::{Request, Rootfs};
use crate::user::{UserError, UserSpec};

/// What names the image's `User` in messages.
pub const IMAGE_USER: &str = "the image's User";

/// Merges the image's defaults into `spec` (nothing for other rootfs
/// kinds), and says on `-v` what the image is. An image's `User` that is
/// not `USER[:GROUP]` is an error (when `-u` does not replace it).
pub fn apply_image_defaults(spec: &mut Request) -> Result<(), UserError> {
    let Rootfs::Image(image) = &spec.rootfs else {
        return Ok(());
    };
    log::info!("image: {}", image.description());
    let config = image.config().clone();
    if spec.user.is_none() {
        spec.user = image_user(&config)?;
        if let Some(user) = &spec.user {
            log::info!("image: the command runs as {user} (the image's User; -u replaces it)");
        }
    }
    let merged = merge(
        &config,
        std::mem::take(&mut spec.command),
        std::mem::take(&mut spec.env),
        spec.workdir.take(),
    );
    spec.command = merged.command;
    spec.env = merged.env;
    spec.workdir = merged.workdir;
    if !spec.command.is_empty() {
        log::info!("image: command {:?}", spec.command);
    }
    Ok(())
}

/// The user an image's configuration names, `None` for root (no `User`,
/// or an empty one).
pub fn image_user(config: &ImageConfig) -> Result<Option<UserSpec>, UserError> {
    match config.user.as_deref() {
        None | Some("") => Ok(None),
        Some(user) => UserSpec::parse(user, IMAGE_USER).map(Some),
    }
}

/// The run's command, environment and directory after the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The argv.
    pub command: Vec<String>,
    /// The environment, in order.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub workdir: Option<String>,
}

/// Merges `config` with what the command line gave (`command` after `--`,
/// `-e` values, `-w`), by the rules in the module comment.
pub fn merge(
    config: &ImageConfig,
    command: Vec<String>,
    cli_env: Vec<(String, String)>,
    workdir: Option<String>,
) -> Merged {
    let args = if command.is_empty() {
        config.cmd.clone()
    } else {
        command
    };
    let command: Vec<String> = config.entrypoint.iter().cloned().chain(args).collect();
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in &config.env {
        match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() => set(&mut env, name, value),
            _ => log::debug!("image: ignoring the Env entry {entry:?}, which is not NAME=value"),
        }
    }
    for (name, value) in cli_env {
        set(&mut env, &name, &value);
    }
    Merged {
        command,
        env,
        workdir: workdir.or_else(|| config.working_dir.clone()),
    }
}

/// Replaces `name` in place, or appends it.
fn set(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: strings(&["/entry", "-x"]),
            cmd: strings(&["default", "args"]),
            env: strings(&["PATH=/opt/bin:/bin", "A=1", "B=2=3", "bogus"]),
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
        }
    }

    #[test]
    fn defaults_apply_when_the_command_line_says_nothing() {
        let merged = merge(&config(), vec![], vec![], None);
        assert_eq!(merged.command, ["/entry", "-x", "default", "args"]);
        assert_eq!(
            merged.env,
            [
                ("PATH".into(), "/opt/bin:/bin".into()),
                ("A".into(), "1".into()),
                ("B".into(), "2=3".into())
            ]
        );
        assert_eq!(merged.workdir.as_deref(), Some("/srv"));
    }

    #[test]
    fn the_command_line_replaces_cmd_but_keeps_the_entrypoint() {
        let merged = merge(
            &config(),
            strings(&["mine"]),
            vec![("A".into(), "x".into()), ("C".into(), "y".into())],
            Some("/tmp".into()),
        );
        assert_eq!(merged.command, ["/entry", "-x", "mine"]);
        let env: Vec<String> = merged.env.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(env, ["PATH=/opt/bin:/bin", "A=x", "B=2=3", "C=y"]);
        assert_eq!(merged.workdir.as_deref(), Some("/tmp"));
    }

    #[test]
    fn the_image_user_is_checked_and_empty_means_root() {
        let user = image_user(&config()).unwrap().unwrap();
        assert_eq!((user.user.as_str(), user.origin), ("app", IMAGE_USER));
        let mut empty = config();
        empty.user = Some(String::new());
        assert_eq!(image_user(&empty), Ok(None));
        empty.user = None;
        assert_eq!(image_user(&empty), Ok(None));
        let mut bad = config();
        bad.user = Some("a:b:c".into());
        let err = image_user(&bad).unwrap_err().to_string();
        assert!(err.starts_with("the image's User \"a:b:c\""), "{err}");
    }

    #[test]
    fn an_image_without_a_command_runs_init_or_what_is_given() {
        let empty = ImageConfig::default();
        assert!(merge(&empty, vec![], vec![], None).command.is_empty());
        assert_eq!(
            merge(&empty, strings(&["sh"]), vec![], None).command,
            ["sh"]
        );
        let only_cmd = ImageConfig {
            cmd: strings(&["/bin/sh"]),
            ..ImageConfig::default()
        };
        assert_eq!(
            merge(&only_cmd, strings(&["ls", "/"]), vec![], None).command,
            ["ls", "/"]
        );
    }
}
