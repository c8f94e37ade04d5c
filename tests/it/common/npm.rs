//! npm packages the tests run (`tests/js`, `clients/js`): installed from their lock files by
//! the first test that needs them, so `cargo test` alone is enough.

use std::fs::File;
use std::path::{Path, PathBuf};

/// `rel` (from the repository root), its pinned packages installed (`npm ci`, only when
/// `package-lock.json` is newer than the last install). Concurrent tests wait for one
/// install. `need` says what to install when npm is missing.
pub fn installed(rel: &str, need: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let name = rel.replace('/', "-");
    let lock =
        File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-npm.lock")))
            .expect("creating the npm lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the npm lock file");
    if !up_to_date(&dir) {
        run(&dir, &["ci", "--no-audit", "--no-fund"], need);
    }
    dir
}

/// `npm ARGS` in `dir`; panics with npm's output when it fails.
pub fn run(dir: &Path, args: &[&str], need: &str) {
    let out = std::process::Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm ({e}): {need}"));
    assert!(
        out.status.success(),
        "npm {} in {} failed ({}): is the npm registry reachable?\n{}{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// npm writes `node_modules/.package-lock.json` last, so it marks a finished install.
fn up_to_date(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(dir.join("node_modules/.package-lock.json")),
        modified(dir.join("package-lock.json")),
    ) {
        (Some(installed), Some(locked)) => installed >= locked,
        _ => false,
    }
}
