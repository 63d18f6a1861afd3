//! The vhost-user-blk daemon's command line. (Being an integration test of
//! this package also makes `cargo test --workspace` build the daemon, which
//! the suites in vmm-vhost and integration drive as a process.)

use std::process::Command;

#[test]
fn bad_options_are_named_and_exit_non_zero() {
    for (args, says) in [
        (&["--image", "/x"][..], "--socket PATH is required"),
        (
            &["--socket", "/tmp/vmm-s", "--image", "/nonexistent"][..],
            "--image /nonexistent",
        ),
        (&["--num-queues", "0"][..], "--num-queues"),
        (&["--queue-size", "100"][..], "--queue-size"),
        (&["--frob"][..], "unknown option"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
