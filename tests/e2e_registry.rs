//! Images straight from a registry, against a real one on this machine:
//! Debian's `docker-registry` (distribution 2.8) started here on
//! 127.0.0.1 with a temporary storage directory and configuration, images
//! built by hand as OCI layouts (as `e2e_image` builds them) and pushed
//! with `skopeo copy`. Each pulled image runs in the chroot engine; one
//! case runs under the qemu engine, and one (`kvm::`) under the kvm
//! engine, in the nested lane where this host's KVM cannot run Linux.

#[macro_use]
mod common;
#[path = "image_cases/mod.rs"]
mod image_cases;
#[path = "../initrd-tools/tests/images/mod.rs"]
mod images;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_code, stderr, stdout};
use images::*;
use serde_json::json;
use test_support::skip_unavailable;

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A bcrypt hash of `s3cret` (the registry's htpasswd takes only bcrypt).
const HTPASSWD: &str = "tester:$2b$12$DrZCX5rTWJuJGhqAhpEctu6Yh4XJ/0BvqIBAWIr1Wn5hMlnRrbkQ.";

/// skopeo's default trust policy, which `skopeo copy` reads.
const SKOPEO_POLICY: &str = "/etc/containers/policy.json";

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    registry_unavailable().or_else(|| image_cases::unavailable("chroot"))
}

/// Why the registry and skopeo cannot run here, if they cannot.
fn registry_unavailable() -> Option<String> {
    if !Path::new(REGISTRY).is_file() {
        return Some(
            "no /usr/bin/docker-registry (install docker-registry; scripts/install-deps)".into(),
        );
    }
    if which("skopeo").is_none() {
        return Some("skopeo is not installed (scripts/install-deps)".into());
    }
    None
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|path| path.is_file())
}

/// A registry of its own: a storage directory, a configuration, a port.
struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    auth: bool,
}

impl Registry {
    fn start(auth: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if auth {
            std::fs::write(dir.path().join("htpasswd"), format!("{HTPASSWD}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = Registry {
            dir,
            port,
            child: None,
            auth,
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer in 30 s: {}", self.log());
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the layout `dir`'s image tagged `tag` as `name` (`repo:tag`);
    /// `all` copies a whole index.
    fn push(&self, dir: &Path, tag: &str, name: &str, all: bool) {
        let mut command = Command::new("skopeo");
        command.args(["copy", "-q", "--dest-tls-verify=false"]);
        if all {
            command.arg("--all");
        }
        if self.auth {
            command.args(["--dest-creds", "tester:s3cret"]);
        }
        command
            .arg(format!("oci:{}:{tag}", dir.display()))
            .arg(format!("docker://{}/{name}", self.host()));
        let output = command.output().expect("run skopeo");
        assert!(
            output.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Builds the image that says `word` (see [`spec`]) and pushes it as
    /// `name` (`repo:tag`); returns its full reference.
    fn push_image(&self, work: &Path, name: &str, word: &str) -> String {
        let tag = name.replace([':', '/'], "-");
        self.push(&layout(work, &tag, &spec(word, "amd64")), &tag, name, false);
        format!("{}/{name}", self.host())
    }

    /// How many times the registry served `GET` for the blob `digest`.
    fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest} ")))
            .count()
    }

    /// The registry's own copy of the blob `digest`.
    fn stored_blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs microrun with its cache in `cache`.
fn microrun(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microrun"));
    command
        .env("XDG_CACHE_HOME", cache)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", cache)
        .env("XDG_RUNTIME_DIR", cache)
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run microrun")
}

/// Runs `cmd` in `image` under the chroot engine.
fn run_chroot(cache: &Path, image: &str, extra: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["--engine", "chroot", "--timeout", "60s"];
    args.extend_from_slice(extra);
    args.push(image);
    args.push("--");
    args.extend_from_slice(cmd);
    microrun(cache, &args, &[])
}

/// A temporary directory, and the cache inside it.
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    (work, cache)
}

/// An image: the base layer (busybox) and a layer that says `word` in
/// /etc/word, for `architecture`.
fn spec(word: &str, architecture: &'static str) -> ImageSpec {
    let mut spec = ImageSpec::new(
        vec![
            (image_cases::base_layer(), Compression::Gzip),
            (
                layer_tar(&[dir("etc"), file("etc/word", format!("{word}\n").as_bytes())]),
                Compression::Zstd,
            ),
        ],
        json!({"Env": ["PATH=/bin"], "Cmd": ["cat", "/etc/word"]}),
    );
    spec.architecture = architecture;
    spec
}

/// Writes an OCI layout of `spec` tagged `tag` under `dir`.
fn layout(dir: &Path, tag: &str, spec: &ImageSpec) -> PathBuf {
    let path = dir.join(format!("layout-{tag}"));
    oci_layout_tagged(&[(tag, spec)]).write_to(&path);
    path
}

/// The digest of the base layer as pushed (gzip of the same tar).
fn base_digest() -> String {
    digest(&compress(&image_cases::base_layer(), Compression::Gzip))
}

/// The manifest digest the registry has for `reference`.
fn remote_digest(reference: &str) -> String {
    let output = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    digest(&output.stdout)
}

macro_rules! need_registry {
    () => {
        if let Some(why) = unavailable() {
            skip_unavailable!("{why}");
            return;
        }
    };
}

#[test]
fn a_tag_and_a_digest_are_pulled_run_listed_and_run_offline() {
    need_registry!();
    let (work, cache) = workspace();
    let mut registry = Registry::start(false);
    let app = format!("{}/app:v1", registry.host());
    registry.push_image(work.path(), "app:v1", "first");

    // Pulled on first use, with a line per layer (stderr is not a terminal).
    let output = run_chroot(&cache, &app, &["--timings"], &["cat", "/etc/word"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "first\n");
    let err = stderr(&output);
    assert!(err.contains("pulled layer"), "{err}");
    assert!(
        err.contains("image pull"),
        "--timings shows the pull: {err}"
    );

    // The image's Cmd runs with no command given; cached: nothing pulled.
    let output = run_chroot(&cache, &app, &[], &[]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "first\n");
    assert!(!stderr(&output).contains("pulled"), "{}", stderr(&output));

    // By digest: its own record, the tag's untouched.
    let pinned = format!("{}/app@{}", registry.host(), remote_digest(&app));
    let output = microrun(&cache, &["pull", &pinned], &[]);
    assert_code(&output, 0);
    assert_eq!(
        stdout(&output),
        format!("{pinned}\n"),
        "pull prints what it pinned"
    );
    let output = microrun(&cache, &["pull", "-q", &app], &[]);
    assert_eq!(
        stdout(&output),
        format!("{app}@{}\n", remote_digest(&app)),
        "a tag, with the digest it resolved to"
    );
    assert_eq!(stderr(&output), "", "-q");
    let listed = microrun(&cache, &["images"], &[]);
    assert_code(&listed, 0);
    let list = stdout(&listed);
    assert!(
        list.contains(&app) && list.contains(&pinned[..pinned.len() - 40]),
        "{list}"
    );
    assert_eq!(list.lines().count(), 3, "{list}");

    // The tag moves in the registry; the cached tag stays until asked.
    registry.push_image(work.path(), "app:v1", "second");
    let output = run_chroot(&cache, &app, &[], &["cat", "/etc/word"]);
    assert_eq!(stdout(&output), "first\n");
    let output = run_chroot(
        &cache,
        &app,
        &["--pull", "always", "-v"],
        &["cat", "/etc/word"],
    );
    assert_eq!(stdout(&output), "second\n");
    let moved = remote_digest(&app);
    assert!(
        stderr(&output).contains(&format!("resolved to {moved}")),
        "-v shows the digest the tag resolved to: {}",
        stderr(&output)
    );
    let output = run_chroot(&cache, &pinned, &["-q"], &["cat", "/etc/word"]);
    assert_eq!(
        stdout(&output),
        "first\n",
        "the digest still names the first image"
    );
    assert_eq!(stderr(&output), "", "-q: no progress");

    // The registry stopped: the cache serves, --pull always cannot.
    registry.stop();
    let output = run_chroot(&cache, &app, &["--pull", "never"], &["cat", "/etc/word"]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "second\n");
    let output = run_chroot(&cache, &app, &[], &["cat", "/etc/word"]);
    assert_eq!(stdout(&output), "second\n");
    let output = run_chroot(&cache, &app, &["--pull", "always"], &["true"]);
    assert_code(&output, 125);
    assert!(
        stderr(&output).contains("cannot reach 127.0.0.1"),
        "{}",
        stderr(&output)
    );

    // Prune keeps what names point to.
    let output = microrun(&cache, &["images", "--prune"], &[]);
    assert_code(&output, 0);
    assert!(
        stdout(&output).starts_with("removed 0 blobs"),
        "{}",
        stdout(&output)
    );
    let output = run_chroot(&cache, &app, &["--pull", "never"], &["cat", "/etc/word"]);
    assert_eq!(stdout(&output), "second\n");
}

#[test]
fn a_shared_base_layer_is_downloaded_once() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    registry.push_image(work.path(), "one:1", "one");
    registry.push_image(work.path(), "two:1", "two");
    let before = registry.blob_gets(&base_digest());
    for name in ["one:1", "two:1", "one:1"] {
        let reference = format!("{}/{name}", registry.host());
        let output = microrun(&cache, &["pull", &reference], &[]);
        assert_code(&output, 0);
    }
    assert_eq!(
        registry.blob_gets(&base_digest()) - before,
        1,
        "the base layer is fetched once for both images and both pulls: {}",
        registry.log()
    );
    let output = run_chroot(&cache, &format!("{}/two:1", registry.host()), &[], &[]);
    assert_eq!(stdout(&output), "two\n");

    // The tag moves; pulled again, the old image's own blobs (manifest,
    // config, top layer) are kept by no name, and a prune removes them
    // and nothing else.
    let one = registry.push_image(work.path(), "one:1", "uno");
    assert_code(&microrun(&cache, &["pull", "-q", &one], &[]), 0);
    let output = microrun(&cache, &["images", "--prune"], &[]);
    assert_code(&output, 0);
    assert!(
        stdout(&output).starts_with("removed 3 blobs"),
        "{}",
        stdout(&output)
    );
    for (name, word) in [("one:1", "uno\n"), ("two:1", "two\n")] {
        let reference = format!("{}/{name}", registry.host());
        let output = run_chroot(&cache, &reference, &["--pull", "never"], &[]);
        assert_eq!(stdout(&output), word, "{}", stderr(&output));
    }
}

/// A cached blob is never trusted: one that no longer matches its digest
/// is removed and fetched again when the image is next converted.
#[test]
fn a_corrupt_cached_blob_is_fetched_again() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    let reference = registry.push_image(work.path(), "c:1", "intact");
    assert_code(&microrun(&cache, &["pull", &reference], &[]), 0);
    let before = registry.blob_gets(&base_digest());
    let cached = cache
        .join("microrun/oci/blobs/sha256")
        .join(&base_digest()[7..]);
    let mut data = std::fs::read(&cached).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&cached, &data).unwrap();
    // `pull` converts nothing: the run converts the image from its blobs.
    assert!(!cache.join("microrun/initrd").exists());
    let output = run_chroot(&cache, &reference, &[], &[]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "intact\n");
    assert_eq!(
        registry.blob_gets(&base_digest()) - before,
        1,
        "{}",
        registry.log()
    );
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        compress(&image_cases::base_layer(), Compression::Gzip)
    );
}

/// A cached run of an unchanged pulled image reads none of its blobs: its
/// opening is remembered by their metadata once they are 2 s old
/// (`initrd_tools::image`), and opened again when one of them changes.
#[test]
fn a_pulled_images_opening_is_remembered_while_its_blobs_are_unchanged() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    let reference = registry.push_image(work.path(), "r:1", "opened");
    assert_code(&microrun(&cache, &["pull", &reference], &[]), 0);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        stdout(&run_chroot(&cache, &reference, &[], &[])),
        "opened\n"
    );
    let manifest = remote_digest(&format!("{}/r:1", registry.host()));
    let entry = std::fs::read_dir(cache.join("microrun/facts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let key = text.lines().next();
            key.is_some_and(|key| key.ends_with(&format!(" manifest {manifest}")))
        })
        .expect("the opening is remembered");
    // What the entry says is believed: the image's command, edited there,
    // is what runs.
    let text = std::fs::read_to_string(&entry).unwrap();
    assert!(text.contains("\"/etc/word\""), "{text}");
    std::fs::write(&entry, text.replace("\"/etc/word\"", "\"/etc/layer\"")).unwrap();
    assert_eq!(stdout(&run_chroot(&cache, &reference, &[], &[])), "one\n");
    // A blob touched: opened again, from the blobs.
    let layer = cache
        .join("microrun/oci/blobs/sha256")
        .join(&base_digest()[7..]);
    std::fs::File::options()
        .write(true)
        .open(&layer)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        stdout(&run_chroot(&cache, &reference, &[], &[])),
        "opened\n"
    );
}

/// Two runs pulling the same image at once both succeed, and the store
/// holds one good copy of each blob.
#[test]
fn concurrent_pulls_of_one_image_are_safe() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    let reference = registry.push_image(work.path(), "p:1", "both");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_microrun"))
            .env("XDG_CACHE_HOME", &cache)
            .args(["pull", &reference])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn(), spawn()];
    for child in children {
        assert_code(&child.wait_with_output().unwrap(), 0);
    }
    let output = run_chroot(&cache, &reference, &["--pull", "never"], &[]);
    assert_eq!(stdout(&output), "both\n");
    let blobs = cache.join("microrun/oci/blobs/sha256");
    for entry in std::fs::read_dir(&blobs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "a partial file is left: {name}");
        assert_eq!(sha256_hex(&std::fs::read(entry.path()).unwrap()), name);
    }
}

#[test]
fn a_multi_platform_index_gives_linux_amd64_or_names_the_others() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    let index_layout = |name: &str, specs: &[(&ImageSpec, &str)]| {
        let mut files = Files::default();
        let mut manifests = Vec::new();
        for (spec, arch) in specs {
            let mut manifest = add_image_blobs(&mut files, spec);
            manifest["platform"] = json!({"architecture": arch, "os": "linux"});
            manifests.push(manifest);
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .unwrap();
        let descriptor = json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest(&index),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        });
        files
            .files
            .insert(format!("blobs/sha256/{}", sha256_hex(&index)), index);
        let path = work.path().join(name);
        oci_layout_with(files, vec![descriptor]).write_to(&path);
        path
    };
    let arm = spec("arm", "arm64");
    let amd = spec("amd", "amd64");
    let both = index_layout("both", &[(&arm, "arm64"), (&amd, "amd64")]);
    registry.push(&both, "multi", "multi:1", true);
    let output = run_chroot(&cache, &format!("{}/multi:1", registry.host()), &[], &[]);
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "amd\n");

    let arm_only = index_layout("arm-only", &[(&arm, "arm64")]);
    registry.push(&arm_only, "multi", "armonly:1", true);
    let output = microrun(
        &cache,
        &["pull", &format!("{}/armonly:1", registry.host())],
        &[],
    );
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(
        err.contains("has no linux/amd64 image") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn a_blob_tampered_with_in_the_registry_is_rejected_and_not_kept() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    registry.push_image(work.path(), "tampered:1", "t");
    let blob = registry.stored_blob(&base_digest());
    let mut data = std::fs::read(&blob).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let output = microrun(
        &cache,
        &["pull", &format!("{}/tampered:1", registry.host())],
        &[],
    );
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(
        err.contains("served") && err.contains(&base_digest()),
        "{err}"
    );
    let kept = cache
        .join("microrun/oci/blobs/sha256")
        .join(&base_digest()[7..]);
    assert!(!kept.exists(), "the bad blob is not kept");
    let other = cache
        .join("microrun/oci/blobs/sha256")
        .join(&remote_digest(&format!("{}/tampered:1", registry.host()))[7..]);
    assert!(
        other.exists(),
        "the store is where this test looks: {}",
        other.display()
    );
    let left: Vec<_> = std::fs::read_dir(cache.join("microrun/oci/blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "no partial file is left: {left:?}");
}

#[test]
fn a_registry_with_htpasswd_auth_takes_the_users_credential_file() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(true);
    let reference = registry.push_image(work.path(), "private:1", "secret");

    let output = microrun(&cache, &["pull", &reference], &[]);
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(
        err.contains("requires a login (401)") && err.contains("no credential file"),
        "{err}"
    );

    let auth = work.path().join("auth.json");
    let wrong = json!({"auths": {registry.host(): {"auth": "dGVzdGVyOndyb25n"}}});
    std::fs::write(&auth, wrong.to_string()).unwrap();
    let auth_text = auth.to_str().unwrap();
    let output = microrun(
        &cache,
        &["pull", &reference],
        &[("REGISTRY_AUTH_FILE", auth_text)],
    );
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(
        err.contains("were refused") && err.contains(auth_text),
        "{err}"
    );

    // base64("tester:s3cret")
    let right = json!({"auths": {registry.host(): {"auth": "dGVzdGVyOnMzY3JldA=="}}});
    std::fs::write(&auth, right.to_string()).unwrap();
    let output = microrun(
        &cache,
        &["pull", &reference],
        &[("REGISTRY_AUTH_FILE", auth_text)],
    );
    assert_code(&output, 0);
    let output = run_chroot(&cache, &reference, &["--pull", "never"], &[]);
    assert_eq!(stdout(&output), "secret\n");
}

#[test]
fn registry_errors_name_the_fix() {
    need_registry!();
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    registry.push_image(work.path(), "known:1", "e");
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            format!("{}/known:nope", registry.host()),
            vec![],
            "no such image or tag (404)",
        ),
        (
            format!("{}/unknown:1", registry.host()),
            vec![],
            "no such image or tag (404)",
        ),
        (
            format!("{}/known:1", registry.host()),
            vec!["--pull", "never"],
            "--pull never forbids pulling it",
        ),
        (
            "Upper/Case".to_string(),
            vec![],
            "No such file or directory",
        ),
        (
            "./missing-dir".to_string(),
            vec![],
            "No such file or directory",
        ),
        ("docker://Upper".to_string(), vec![], "must be lowercase"),
    ];
    for (reference, extra, want) in cases {
        let output = run_chroot(&cache, &reference, &extra, &["true"]);
        assert_code(&output, 125);
        let err = stderr(&output);
        assert!(err.contains(want), "{reference}: {err}");
        // A name that could have been a path says it is none.
        let taken = reference.starts_with("127.0.0.1");
        assert_eq!(
            err.contains("is no file or directory here, so it was taken as an image reference"),
            taken,
            "{reference}: {err}"
        );
    }
    // A registry that is not there: the network error, with the way out.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = microrun(&cache, &["pull", &format!("127.0.0.1:{closed}/x:1")], &[]);
    assert_code(&output, 125);
    let err = stderr(&output);
    assert!(
        err.contains("cannot reach") && err.contains("--pull"),
        "{err}"
    );
}

/// The pulled image boots under the qemu engine (TCG here): one case.
#[test]
fn qemu_runs_a_pulled_image() {
    need_registry!();
    if let Some(why) = image_cases::unavailable("qemu") {
        skip_unavailable!("qemu engine: {why}");
        return;
    }
    let (work, cache) = workspace();
    let registry = Registry::start(false);
    registry.push_image(work.path(), "vm:1", "booted");
    let kernel = common::project_kernel().unwrap();
    let output = microrun(
        &cache,
        &[
            "--engine",
            "qemu",
            "--timeout",
            "120s",
            "--kernel",
            kernel.to_str().unwrap(),
            &format!("{}/vm:1", registry.host()),
        ],
        &[],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "booted\n");

    // As a disk root (EROFS), from the cache; no newc archive is made for it.
    let other = registry.push_image(work.path(), "disk:1", "from-disk");
    let output = microrun(
        &cache,
        &[
            "--engine",
            "qemu",
            "--timeout",
            "120s",
            "--root",
            "disk",
            "--kernel",
            kernel.to_str().unwrap(),
            &other,
        ],
        &[],
    );
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "from-disk\n", "{}", stderr(&output));
    let archives = std::fs::read_dir(cache.join("microrun/initrd"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cpio"))
        .count();
    assert_eq!(
        archives, 1,
        "only the first run's image became a newc archive"
    );
}

/// `--timeout` counts from microrun's start, the pull included: a registry
/// that sends its headers at once and then its manifest a byte a second
/// ends the run at the timeout with 124 (it ran 18 s and exited 125).
/// Needs no registry program: the trickling one is a thread here.
#[test]
fn a_trickling_registry_ends_the_run_at_its_timeout_with_124() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || trickle(stream));
        }
    });
    let (_work, cache) = workspace();
    let reference = format!("127.0.0.1:{port}/app:1");
    let started = Instant::now();
    let output = microrun(&cache, &["--timeout", "2s", &reference, "--", "true"], &[]);
    let took = started.elapsed();
    assert_code(&output, 124);
    let err = stderr(&output);
    assert!(err.contains("--timeout expired while pulling"), "{err}");
    assert!(took < Duration::from_secs(6), "ran {took:?}");
}

/// Answers one plain-HTTP request with a manifest's headers at once, then
/// its body a byte a second.
fn trickle(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        // microrun's HTTPS try (a TLS hello) is closed at once, so that it
        // goes on over plain HTTP, as a loopback registry allows.
        if !b"GET ".starts_with(&request[..request.len().min(4)]) {
            return;
        }
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                Content-Length: 100\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    for _ in 0..100 {
        std::thread::sleep(Duration::from_secs(1));
        if stream.write_all(b" ").is_err() {
            return;
        }
    }
}

/// The pulled image under the kvm engine: on hardware KVM here; where this
/// host's KVM cannot run Linux (kvm_pvm), in the nested lane
/// (`common::nested`), which carries the registry, skopeo and its policy
/// for it, so the registry runs on the outer VM's 127.0.0.1 and the pull
/// happens there. This binary's other cases run on the host.
mod kvm {
    use super::*;
    use common::Engine;

    const ENGINE: Engine = image_cases::KVM;

    #[test]
    fn a_pulled_image_runs_and_runs_offline() {
        if let Some(why) = registry_unavailable() {
            skip_unavailable!("{why}");
            return;
        }
        common::nested::set_extras(common::nested::Extras {
            bins: [PathBuf::from(REGISTRY)]
                .into_iter()
                .chain(which("skopeo"))
                .collect(),
            files: [PathBuf::from(SKOPEO_POLICY)]
                .into_iter()
                .filter(|policy| policy.is_file())
                .collect(),
            cases_under: Some("kvm::"),
        });
        common::run_case(
            &ENGINE,
            concat!(module_path!(), "::a_pulled_image_runs_and_runs_offline"),
            pulled_image_runs,
        );
    }

    fn pulled_image_runs(engine: &Engine) {
        if let Some(why) = registry_unavailable().or_else(engine.unavailable) {
            skip_unavailable!("{} engine: {why}", engine.name);
            return;
        }
        let (work, cache) = workspace();
        let mut registry = Registry::start(false);
        let reference = registry.push_image(work.path(), "kvm:1", "booted");
        let kernel = (engine.kernel)().expect("checked by unavailable");
        let run = |extra: &[&str]| {
            let mut args = engine.args.to_vec();
            args.extend(["--timeout", "120s", "--kernel", kernel.to_str().unwrap()]);
            args.extend_from_slice(extra);
            args.push(&reference);
            microrun(&cache, &args, &[])
        };
        let output = run(&[]);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "booted\n", "{}", stderr(&output));
        assert!(
            stderr(&output).contains("pulled layer"),
            "{}",
            stderr(&output)
        );

        // The registry gone: the cache serves the kvm engine too.
        registry.stop();
        let output = run(&["--pull", "never"]);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "booted\n", "{}", stderr(&output));
    }
}
