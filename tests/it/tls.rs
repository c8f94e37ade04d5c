//! TLS and authentication against real servers (issue 16.1-2): a private cluster with
//! `ssl = on`, a CA, server and client certificates made here with rcgen, and a pg_hba.conf
//! that takes SCRAM passwords and client certificates over TLS only (`hostnossl ... reject`);
//! and a plain cluster for what `require` and `prefer` do without TLS. Both are started once
//! for this file and shared; each test has databases of its own.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::common::process::{path_str, relay_cmd, run_to_end, write_config, Proc, EXIT_PATIENCE};
use crate::common::{count_status, insert_events, wait_until, webhook_toml, Receiver};
use nix::sys::signal::Signal;
use outbox_relay::pgtemp::TempCluster;
use outbox_relay::secret::Secret;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// The SCRAM role's password: must appear in no output of the binary.
const PASSWORD: &str = "Tls-test-pw-7Qx9";
/// A wrong password, equally secret.
const WRONG_PASSWORD: &str = "Not-the-pw-3Kd8";
/// The SCRAM role (`hostssl ... scram-sha-256`) and the certificate role (`hostssl ... cert`).
const PW_ROLE: &str = "relay_pw";
const CERT_ROLE: &str = "relay_cert";

struct Tls {
    port: u16,
    /// ca.pem, other-ca.pem (a CA that signed nothing here), client.pem/client.key (CN
    /// relay_cert, signed by the CA), stranger.pem/stranger.key (CN relay_cert, other CA).
    dir: PathBuf,
}

impl Tls {
    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

static TLS: OnceLock<Tls> = OnceLock::new();
static PLAIN_PORT: OnceLock<u16> = OnceLock::new();
/// The clusters and the certificates' directory, dropped (stopped, deleted) at exit:
/// statics are never dropped.
static OWNED: Mutex<Vec<Box<dyn Send>>> = Mutex::new(Vec::new());

extern "C" fn drop_owned() {
    if let Ok(mut owned) = OWNED.lock() {
        owned.clear();
    }
}

fn keep(thing: Box<dyn Send>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(drop_owned)
        };
    });
    OWNED.lock().unwrap().push(thing);
}

fn write(dir: &Path, name: &str, text: &str, owner: Option<&nix::unistd::User>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some(u) = owner {
        nix::unistd::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
    }
    p
}

/// A self-signed CA called `name` (tests/it/redis.rs issues with it too).
pub(crate) fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    (p.self_signed(&key).unwrap(), key)
}

/// A certificate for `names` signed by `ca`: (certificate PEM, key PEM).
pub(crate) fn leaf(
    cn: &str,
    names: &[&str],
    eku: ExtendedKeyUsagePurpose,
    (ca, ca_key): &(rcgen::Certificate, KeyPair),
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(names).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![eku];
    (
        p.signed_by(&key, ca, ca_key).unwrap().pem(),
        key.serialize_pem(),
    )
}

/// The TLS cluster: started on first use, its certificates issued for `localhost` only.
fn tls() -> &'static Tls {
    TLS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("outbox-relay-tls-")
            .tempdir()
            .unwrap();
        let server_user = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("a postgres user");
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid)).unwrap();
            Some(u)
        } else {
            None
        };
        let d = dir.path();
        let ours = ca("outbox-relay test CA");
        let other = ca("some other CA");
        let (server, server_key) = leaf(
            "localhost",
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ours,
        );
        let (client, client_key) = leaf(CERT_ROLE, &[], ExtendedKeyUsagePurpose::ClientAuth, &ours);
        let (stranger, stranger_key) =
            leaf(CERT_ROLE, &[], ExtendedKeyUsagePurpose::ClientAuth, &other);
        let srv = server_user.as_ref();
        let ca_file = write(d, "ca.pem", &ours.0.pem(), srv);
        write(d, "other-ca.pem", &other.0.pem(), srv);
        let crt = write(d, "server.pem", &server, srv);
        let key = write(d, "server.key", &server_key, srv);
        write(d, "client.pem", &client, None);
        write(d, "client.key", &client_key, None);
        write(d, "stranger.pem", &stranger, None);
        write(d, "stranger.key", &stranger_key, None);
        let hba = write(
            d,
            "pg_hba.conf",
            &format!(
                "local all all trust\n\
                 hostssl all postgres 127.0.0.1/32 trust\n\
                 hostssl all {PW_ROLE} 127.0.0.1/32 scram-sha-256\n\
                 hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n\
                 hostnossl all all 127.0.0.1/32 reject\n"
            ),
            srv,
        );
        let opts = format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c ssl_ca_file={} -c hba_file={} \
             -c password_encryption=scram-sha-256",
            crt.display(),
            key.display(),
            ca_file.display(),
            hba.display()
        );
        let cluster = TempCluster::start_with(&opts).expect("starting the TLS cluster");
        let tls = Tls {
            port: cluster.port(),
            dir: dir.path().to_owned(),
        };
        keep(Box::new(cluster));
        keep(Box::new(dir));
        tls
    })
}

/// The port of a cluster without TLS.
fn plain_port() -> u16 {
    *PLAIN_PORT.get_or_init(|| {
        let cluster = TempCluster::start().expect("starting the plain cluster");
        let port = cluster.port();
        keep(Box::new(cluster));
        port
    })
}

/// `postgres://user[:pw]@host:port/db?params`.
fn url(user: &str, pw: Option<&str>, host: &str, port: u16, db: &str, params: &str) -> String {
    let pw = pw.map(|p| format!(":{p}")).unwrap_or_default();
    let q = if params.is_empty() {
        String::new()
    } else {
        format!("?{params}")
    };
    format!("postgres://{user}{pw}@{host}:{port}/{db}{q}")
}

/// The superuser over TLS (`hostssl ... trust`).
async fn admin(db: &str) -> tokio_postgres::Client {
    let t = tls();
    let u = url("postgres", None, "localhost", t.port, db, "sslmode=require");
    outbox_relay::db::connect(&Secret::new(u)).await.unwrap()
}

/// Roles (once) and a database owned by `owner` on the TLS cluster.
async fn tls_db(owner: &str) -> String {
    let a = admin("postgres").await;
    a.batch_execute(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PW_ROLE}') THEN
             CREATE ROLE {PW_ROLE} LOGIN PASSWORD '{PASSWORD}';
           END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CERT_ROLE}') THEN
             CREATE ROLE {CERT_ROLE} LOGIN;
           END IF;
         EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL;
         END $$;"
    ))
    .await
    .unwrap();
    let name = format!("tls_{}", uuid::Uuid::new_v4().simple());
    a.batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
        .await
        .unwrap();
    name
}

/// Runs `args` with DATABASE_URL = `url` (when given): (success, stdout, stderr).
async fn relay(args: &[&str], url: Option<&str>) -> (bool, String, String) {
    let mut cmd = relay_cmd(args);
    if let Some(u) = url {
        cmd.env("DATABASE_URL", u);
    }
    let (status, out, err) = run_to_end(&format!("outbox-relay {args:?}"), cmd).await;
    (status.success(), out, err)
}

fn assert_no_password(who: &str, text: &str) {
    for pw in [PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(pw), "{who} printed a password:\n{text}");
    }
}

/// migrate, run (a webhook receives an event), status: all over TLS as `role`, and no
/// password in any output. `env_url` is DATABASE_URL (None: the file's `database_url`);
/// `head` starts the config file.
async fn deliver_end_to_end(env_url: Option<&str>, head: &str, db: &str, role: &str) {
    let rx = Receiver::start().await;
    let cfg = write_config(&format!(
        "{head}\n{}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        webhook_toml("tls", &rx.url)
    ));
    let (ok, out, err) = relay(&["migrate", "--config", path_str(&cfg)], env_url).await;
    assert!(ok, "migrate failed:\n{err}");
    let mut cmd = relay_cmd(&["run", "--config", path_str(&cfg)]);
    if let Some(u) = env_url {
        cmd.env("DATABASE_URL", u);
    }
    let mut run = Proc::spawn("relay over TLS", cmd);
    let app = admin(db).await;
    let ids = insert_events(&app, 1, "TLS.TEST").await;
    rx.wait_accepted(&ids).await;
    wait_until("the event is COMPLETED", || {
        let app = &app;
        async move { count_status(app, "COMPLETED").await == 1 }
    })
    .await;
    // The server refuses plain connections (hostnossl ... reject), so every relay connection
    // (pool, LISTEN, wake lock) is over TLS; pg_stat_ssl says so too. The LISTEN connection
    // may still be opening when the first event (claimed at start) is delivered: wait for it.
    wait_until("two relay connections over TLS (pool and LISTEN)", || {
        let app = &app;
        async move {
            let over_tls: i64 = app
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                      WHERE a.datname = current_database() AND a.usename = $1 AND s.ssl",
                    &[&role],
                )
                .await
                .unwrap()
                .get(0);
            over_tls >= 2
        }
    })
    .await;
    let (ok, status, serr) =
        relay(&["status", "--json", "--config", path_str(&cfg)], env_url).await;
    assert!(ok, "status failed:\n{serr}");
    assert!(status.contains("\"COMPLETED\": 1"), "{status}");
    run.signal(Signal::SIGTERM);
    assert_eq!(run.wait_exit(EXIT_PATIENCE).await.code(), Some(0));
    for (who, text) in [
        ("migrate", out + &err),
        ("run", run.stdout() + &run.stderr()),
        ("status", status + &serr),
    ] {
        assert_no_password(who, &text);
    }
}

#[tokio::test]
async fn verify_full_with_a_url_delivers_end_to_end() {
    let t = tls();
    let db = tls_db(PW_ROLE).await;
    let params = format!("sslmode=verify-full&sslrootcert={}", t.file("ca.pem"));
    let u = url(PW_ROLE, Some(PASSWORD), "localhost", t.port, &db, &params);
    deliver_end_to_end(Some(&u), "", &db, PW_ROLE).await;
}

#[tokio::test]
async fn verify_full_from_the_config_file_with_a_client_certificate() {
    let t = tls();
    let db = tls_db(CERT_ROLE).await;
    let head = format!(
        "database_url = \"{}\"\n[database]\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n\
         sslcert = \"{}\"\nsslkey = \"{}\"\n",
        url(CERT_ROLE, None, "localhost", t.port, &db, ""),
        t.file("ca.pem"),
        t.file("client.pem"),
        t.file("client.key"),
    );
    deliver_end_to_end(None, &head, &db, CERT_ROLE).await;
}

/// Runs `status` expecting failure; returns its stderr, which must be one line holding
/// `needle` and no password.
async fn fails_with(what: &str, url: &str, file: Option<&str>, needle: &str) -> String {
    let cfg = write_config(file.unwrap_or(""));
    let (ok, out, err) = relay(&["status", "--config", path_str(&cfg)], Some(url)).await;
    assert!(!ok, "{what}: status succeeded:\n{out}");
    assert_no_password(what, &(out.clone() + &err));
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("outbox-relay:"))
        .collect();
    assert_eq!(lines.len(), 1, "{what}: not one error line:\n{err}");
    assert!(
        lines[0].contains(needle),
        "{what}: wanted {needle:?} in:\n{err}"
    );
    println!("{what}: {}", lines[0]);
    lines[0].to_owned()
}

#[tokio::test]
async fn failures_say_what_to_fix() {
    let t = tls();
    let db = tls_db(PW_ROLE).await;
    let ca = t.file("ca.pem");
    let good = |host: &str, params: &str| url(PW_ROLE, Some(PASSWORD), host, t.port, &db, params);
    let (ok, _, err) = relay(
        &["migrate"],
        Some(&good(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )),
    )
    .await;
    assert!(ok, "{err}");

    // The certificate names localhost only: by address, verify-full refuses it...
    let line = fails_with(
        "verify-full by address",
        &good(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        None,
        "the server's certificate is not valid for the host name 127.0.0.1",
    )
    .await;
    assert!(
        line.contains("connect by a name the certificate lists"),
        "{line}"
    );
    // ...verify-ca (the chain only) and require (nothing) accept it.
    for params in [
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        "sslmode=require".to_owned(),
    ] {
        let (ok, _, err) = relay(&["status"], Some(&good("127.0.0.1", &params))).await;
        assert!(ok, "{params}: {err}");
    }

    let other = t.file("other-ca.pem");
    fails_with(
        "unknown CA",
        &good(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ),
        None,
        &format!(
            "the server's certificate is not signed by a CA in sslrootcert ({other}): set \
             sslrootcert to the CA that signed it"
        ),
    )
    .await;
    // require with sslrootcert checks the chain, as libpq does.
    fails_with(
        "require with an unknown CA",
        &good("localhost", &format!("sslmode=require&sslrootcert={other}")),
        None,
        "not signed by a CA in sslrootcert",
    )
    .await;
    // Without sslrootcert, verify-full uses the system's roots, which do not hold ours.
    fails_with(
        "system roots",
        &good("localhost", "sslmode=verify-full"),
        None,
        "the server's certificate is not signed by a CA in the system's root certificates",
    )
    .await;

    // A wrong SCRAM password: one line, the password nowhere.
    let wrong = url(
        PW_ROLE,
        Some(WRONG_PASSWORD),
        "localhost",
        t.port,
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    fails_with(
        "wrong password",
        &wrong,
        None,
        &format!("password authentication failed for user \"{PW_ROLE}\": check the password in database_url"),
    )
    .await;

    // Client certificates: none, one from another CA, an unreadable or invalid key file.
    let cert_url = |params: &str| url(CERT_ROLE, None, "localhost", t.port, &db, params);
    let base = format!("sslmode=verify-full&sslrootcert={ca}");
    fails_with(
        "no client certificate",
        &cert_url(&base),
        None,
        "client certificate",
    )
    .await;
    let stranger = format!(
        "[database]\nsslcert = \"{}\"\nsslkey = \"{}\"\n",
        t.file("stranger.pem"),
        t.file("stranger.key")
    );
    fails_with(
        "a client certificate from another CA",
        &cert_url(&base),
        Some(&stranger),
        "the server refused the client certificate",
    )
    .await;
    let missing = format!(
        "{base}&sslcert={}&sslkey=/nonexistent/client.key",
        t.file("client.pem")
    );
    fails_with(
        "missing key file",
        &cert_url(&missing),
        None,
        "cannot read sslkey file /nonexistent/client.key",
    )
    .await;
    let bad_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_key.path(), "MARKER-NOT-A-KEY-e81f\n").unwrap();
    let bad = format!(
        "{base}&sslcert={}&sslkey={}",
        t.file("client.pem"),
        bad_key.path().display()
    );
    let line = fails_with(
        "invalid key file",
        &cert_url(&bad),
        None,
        &format!(
            "sslkey file {} holds no PEM private key",
            bad_key.path().display()
        ),
    )
    .await;
    assert!(!line.contains("MARKER"), "{line}");

    // Plain connections are refused by this server (so the successes above used TLS).
    fails_with(
        "sslmode=disable",
        &good("localhost", "sslmode=disable"),
        None,
        "no encryption",
    )
    .await;
}

#[tokio::test]
async fn require_needs_a_server_with_tls_and_prefer_does_not() {
    let port = plain_port();
    let u = |params: &str| url("postgres", None, "127.0.0.1", port, "postgres", params);
    fails_with(
        "require to a plain server",
        &u("sslmode=require"),
        None,
        "the server does not offer TLS; ",
    )
    .await;
    fails_with(
        "verify-full to a plain server",
        &u("sslmode=verify-full"),
        None,
        "the server does not offer TLS; ",
    )
    .await;
    for params in ["sslmode=prefer", ""] {
        let (ok, _, err) = relay(&["migrate"], Some(&u(params))).await;
        assert!(ok, "{params:?}: {err}");
        let (ok, _, err) = relay(&["status"], Some(&u(params))).await;
        assert!(ok, "{params:?}: {err}");
    }
}
