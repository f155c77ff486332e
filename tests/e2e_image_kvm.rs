//! Images as ROOTFS under the kvm engine: the cases of `image_cases` (every
//! format with its config's defaults; the command line overriding them as
//! `docker run` does). On hardware KVM they run here; on a host whose KVM
//! cannot run Linux (kvm_pvm) in the nested-KVM lane (`common::nested`, one
//! outer VM for this binary), like `e2e_kvm`.

#[macro_use]
mod common;
#[path = "image_cases/mod.rs"]
mod image_cases;
#[path = "../initrd-tools/tests/images/mod.rs"]
mod images;

use common::Engine;

const ENGINE: Engine = image_cases::KVM;

#[test]
fn every_format_runs_with_its_defaults() {
    common::run_case(
        &ENGINE,
        concat!(module_path!(), "::every_format_runs_with_its_defaults"),
        |_| image_cases::every_format_runs_with_its_defaults("kvm"),
    );
}

#[test]
fn the_command_line_overrides_as_docker_run_does() {
    common::run_case(
        &ENGINE,
        concat!(
            module_path!(),
            "::the_command_line_overrides_as_docker_run_does"
        ),
        |_| image_cases::the_command_line_overrides_as_docker_run_does("kvm"),
    );
}

#[test]
fn the_image_user_is_the_default_and_u_wins() {
    common::run_case(
        &ENGINE,
        concat!(module_path!(), "::the_image_user_is_the_default_and_u_wins"),
        |_| image_cases::the_image_user_is_the_default_and_u_wins("kvm"),
    );
}
