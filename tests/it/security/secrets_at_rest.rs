//! Secrets where other users can read them (issue 15.9): a config file with literal secrets
//! that group or others may read, a `file:` secret likewise, and a password in
//! `--database-url` (which `ps` shows everyone) are warned about once at start, like ssh
//! does for keys, without the secret itself, and the relay still starts. `check-config` and
//! `migrate --print` read the config without needing a database, so these tests run no relay.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::process::{assert_no_secret, path_str, relay_cmd, run_to_end, write_config};
use crate::common::SECRET;

const ADMIN_TOKEN: &str = "admin-literal-7f3a9c";
const SSE_KEY: &str = "sse-literal-key-5e1d";
const DB_PASSWORD: &str = "secretpw";
/// What the config-file warning starts with.
const CONFIG_WARNING: &str = "config file ";
/// What the secret-file and config-file warnings say about the mode.
const OPEN: &str = "open to group/others";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `cmd` to its end: (exit code, stdout and stderr together, stderr).
async fn output(what: &str, cmd: Command) -> (Option<i32>, String, String) {
    let (status, out, err) = run_to_end(what, cmd).await;
    (status.code(), format!("{out}{err}"), err)
}

/// None of the secrets these tests write shows anywhere in `text`.
fn assert_no_secrets(who: &str, text: &str) {
    assert_no_secret(who, text);
    for s in [ADMIN_TOKEN, SSE_KEY, DB_PASSWORD] {
        assert!(
            !text.contains(s),
            "{who} wrote a secret to its output:\n{text}"
        );
    }
}

/// How many stderr lines contain `needle`.
fn lines_with(stderr: &str, needle: &str) -> usize {
    stderr.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_others_can_read_with_literal_secrets_is_warned_about_once() {
    let file = write_config(&format!(
        "database_url = \"postgres://relay:{DB_PASSWORD}@127.0.0.1:1/app\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
         [sse]\ntoken_secret = \"{SSE_KEY}\"\n\
         [[webhook]]\nname = \"main\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{SECRET}\"\n"
    ));
    let path = path_str(&file);
    chmod(file.path(), 0o644);
    // `status` connects (to nothing here, and fails) after loading the config.
    for args in [&["check-config"][..], &["migrate", "--print"], &["status"]] {
        let mut cmd = relay_cmd(args);
        cmd.args(["--config", path]);
        let (code, all, err) = output(&format!("{args:?} at 0644"), cmd).await;
        if args != ["status"] {
            assert_eq!(code, Some(0), "{args:?}: warned, not refused:\n{err}");
        }
        assert_eq!(lines_with(&err, CONFIG_WARNING), 1, "{args:?}:\n{err}");
        let line = err.lines().find(|l| l.contains(CONFIG_WARNING)).unwrap();
        for part in [
            &format!(
                "config file {path} holds secrets (database_url, http.admin_token, \
                      sse.token_secret, webhook[0].secret) and is open to group/others \
                      (mode 0644): chmod 600 it, or use env:/file: references"
            )[..],
            " WARN ",
        ] {
            assert!(line.contains(part), "{part:?} not in: {line}");
        }
        assert_no_secrets(&format!("{args:?}"), &all);
    }

    for mode in [0o600, 0o400] {
        chmod(file.path(), mode);
        let cmd = relay_cmd(&["check-config", "--config", path]);
        let (code, all, err) = output(&format!("check-config at {mode:o}"), cmd).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(
            !err.contains(OPEN),
            "a private file is warned about:\n{err}"
        );
        assert_no_secrets("check-config", &all);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_not_warned_about_but_a_secret_file_others_can_read_is() {
    let key_file = write_config(&format!("{SSE_KEY}\n"));
    chmod(key_file.path(), 0o600);
    let file = write_config(&format!(
        "database_url = \"postgres://relay@127.0.0.1:1/app\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"env:TEST_ADMIN_TOKEN\"\n\
         [sse]\ntoken_secret = \"file:{}\"\n\
         [[webhook]]\nname = \"main\"\nurl = \"http://127.0.0.1:9/\"\n\
         secret = \"env:TEST_WEBHOOK_SECRET\"\n",
        path_str(&key_file)
    ));
    chmod(file.path(), 0o644);
    let check = || {
        let mut cmd = relay_cmd(&["check-config", "--config", path_str(&file)]);
        cmd.env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TEST_WEBHOOK_SECRET", SECRET);
        output("check-config with references", cmd)
    };
    let (code, all, err) = check().await;
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains(OPEN), "references are warned about:\n{err}");
    assert_no_secrets("check-config", &all);

    chmod(key_file.path(), 0o644);
    let (code, all, err) = check().await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines_with(&err, OPEN), 1, "{err}");
    let want = format!(
        "secret file {} is open to group/others (mode 0644): chmod 600 it",
        path_str(&key_file)
    );
    assert!(err.contains(&want), "{want:?} not in:\n{err}");
    assert_no_secrets("check-config", &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_on_the_command_line_is_warned_about_once() {
    let with_password = format!("postgres://relay:{DB_PASSWORD}@127.0.0.1:1/app");
    let flag = format!("--database-url={with_password}");
    for args in [
        &["check-config", "--database-url", &with_password][..],
        &[&flag, "check-config"],
        &["status", "--database-url", &with_password],
    ] {
        let (code, all, err) = output(&format!("{args:?}"), relay_cmd(args)).await;
        if args[0] == "check-config" {
            assert_eq!(code, Some(0), "{args:?}: warned, not refused:\n{err}");
        }
        assert_eq!(lines_with(&err, "process list"), 1, "{args:?}:\n{err}");
        assert!(
            err.contains(
                "--database-url holds a password, which other users can read in the process \
                 list (ps): set DATABASE_URL instead"
            ),
            "{args:?}:\n{err}"
        );
        assert_no_secrets(&format!("{args:?}"), &all);
    }

    // The same URL from the environment, one without a password, and a reference: quiet.
    let password_file = write_config(&with_password);
    let reference = format!("file:{}", path_str(&password_file));
    let mut from_env = relay_cmd(&["check-config"]);
    from_env.env("DATABASE_URL", &with_password);
    for (what, cmd) in [
        ("DATABASE_URL", from_env),
        (
            "no password",
            relay_cmd(&[
                "check-config",
                "--database-url",
                "postgres://relay@127.0.0.1:1/app",
            ]),
        ),
        (
            "a file: reference",
            relay_cmd(&["check-config", "--database-url", &reference]),
        ),
    ] {
        let (code, all, err) = output(what, cmd).await;
        assert_eq!(code, Some(0), "{what}: {err}");
        assert!(
            !err.contains("process list"),
            "{what} is warned about:\n{err}"
        );
        assert_no_secrets(what, &all);
    }
}
