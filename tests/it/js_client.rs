//! The TypeScript client for the app side (`clients/js`, issue 21), tested by its own Node
//! test suite (`clients/js/test/*.test.mjs`, `node --test`) against this build's relay
//! binary and a real PostgreSQL database prepared here: the README's Prisma table, adopted
//! by `migrate` with SSE on.
//!
//! The suite covers the subscriber (live events, ten token renewals without a gap or a
//! duplicate, a relay restart, a wrong token, one shared connection) and the Prisma
//! publisher with a real Prisma Client generated from the README's model (commit, rollback,
//! the full client refused at compile and at run time, Decimal/BigInt/Date payloads).
//! Needs Node.js 18+ and npm; the package's pinned dependencies are installed by the test.

use crate::common::orm::PRISMA;
use crate::common::sse::{sse_toml, SSE_SECRET};
use crate::common::*;

const NEED_NODE: &str = "the TypeScript client's tests need Node.js 18 or later and npm \
(Debian/Ubuntu: apt-get install nodejs npm)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_passes_its_node_tests_against_this_relay() {
    let dir = tokio::task::spawn_blocking(|| {
        let dir = npm::installed("clients/js", NEED_NODE);
        npm::run(&dir, &["run", "build"], NEED_NODE);
        dir
    })
    .await
    .unwrap();
    let db = TestDb::new().await;
    db.client().await.batch_execute(PRISMA.ddl).await.unwrap();
    db.migrate(&db.config(&sse_toml("1s"))).await;

    let mut files: Vec<String> = std::fs::read_dir(dir.join("test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .args(&files)
        .current_dir(&dir)
        .env("OUTBOX_RELAY_BIN", relay_bin())
        .env("DATABASE_URL", &db.url)
        .env("SSE_TOKEN_SECRET", SSE_SECRET)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
        .await
        .expect("the Node tests took over 5 minutes")
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {NEED_NODE}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{report}");
    // The suite ran (a filter or an empty directory would pass with nothing run).
    assert!(
        report.contains("pass 9") && report.contains("fail 0"),
        "{report}"
    );
}
