//! The `outbox-relay` binary: parse arguments, set up logging, run a command.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use outbox_relay::cli::{Cli, Command};
use outbox_relay::commands;
use outbox_relay::config::{Config, ConfigError, Needs, Overrides};
use outbox_relay::db::admin::NewEvent;
use outbox_relay::db::privileges::MissingPrivileges;
use outbox_relay::db::shape::Unadoptable;
use tokio_util::sync::CancellationToken;

/// Exit status for a bad config, bad arguments (clap uses 2 as well) or a missing privilege.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    let matches = Cli::command().get_matches();
    let cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    outbox_relay::logging::init(cli.global.log_format);
    warn_password_on_command_line(&matches, &cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match operator_error(&e) {
            Some(line) => {
                eprintln!("outbox-relay: {line}");
                ExitCode::from(EXIT_CONFIG)
            }
            None => {
                eprintln!("outbox-relay: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The error as one line, without the context around it, when only the operator can fix it:
/// the config (a bad key, a `table` naming a relation that is not an outbox) or a privilege
/// the role lacks (permanent until a DBA grants it). Such errors exit [`EXIT_CONFIG`], not
/// worth a restart loop.
fn operator_error(e: &anyhow::Error) -> Option<String> {
    let config = e.downcast_ref::<ConfigError>().map(ToString::to_string);
    config
        .or_else(|| e.downcast_ref::<Unadoptable>().map(ToString::to_string))
        .or_else(|| {
            e.downcast_ref::<MissingPrivileges>()
                .map(ToString::to_string)
        })
}

/// Every user of the machine can read a process's arguments (`ps`, `/proc/PID/cmdline`), so a
/// password given with `--database-url` is out. Warned about, not refused: the URL works, and
/// the operator may have no better way right now. The same URL from DATABASE_URL is not
/// warned about: the environment is private to the user.
fn warn_password_on_command_line(matches: &ArgMatches, cli: &Cli) {
    let from_flag = matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let url = cli.global.database_url.as_deref().unwrap_or_default();
    if from_flag && outbox_relay::secret::holds_password(url) {
        tracing::warn!(
            "--database-url holds a password, which other users can read in the process list \
             (ps): set DATABASE_URL instead, or database_url in a config file only you can \
             read, or pass a file: reference (--database-url file:/path)"
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        database_url: cli.global.database_url.clone(),
    };
    if let Command::Keygen { hmac } = cli.command {
        let (secret, public) = outbox_relay::sinks::webhook::signature::generate(!hmac);
        println!("secret = \"{secret}\"");
        match public {
            Some(public) => println!(
                "# Keep the secret in the relay's config only (or behind env:/file:).\n\
                 # Receivers verify v1a signatures with the public key: {public}"
            ),
            None => println!("# The receiver verifies v1 signatures with this same secret."),
        }
        return Ok(());
    }
    if let Command::Dev { listen } = cli.command {
        return commands::dev::run(cli.global.config.as_deref(), &overrides, listen).await;
    }
    let cfg = Config::load(
        cli.global.config.as_deref(),
        &overrides,
        needs(&cli.command),
    )?;
    // `listen = false` is the setting for transaction-mode poolers: keep no named
    // statements on the server (see `db::statements`).
    outbox_relay::db::statements::set_pooler_safe(!cfg.listen);
    match cli.command {
        Command::Run => {
            let shutdown = CancellationToken::new();
            outbox_relay::daemon::shutdown::on_signal(shutdown.clone());
            outbox_relay::daemon::Daemon::start(cfg, shutdown)
                .await?
                .wait()
                .await
        }
        Command::Migrate {
            print_grants: Some(role),
            ..
        } => {
            print!(
                "{}",
                outbox_relay::db::privileges::grants_script(&cfg.table_settings(), &role)
            );
            Ok(())
        }
        Command::Migrate { print, .. } => commands::migrate(&cfg, print).await,
        Command::Status { json } => commands::status(&cfg, json).await,
        Command::Retry {
            ids,
            failed: _,
            event_type,
        } => commands::retry(&cfg, &ids, event_type.as_deref())
            .await
            .map(drop),
        Command::Skip { ids } => commands::skip(&cfg, &ids).await.map(drop),
        Command::Purge { older_than } => commands::purge(&cfg, older_than).await.map(drop),
        Command::Pause { endpoint } => commands::set_paused(&cfg, &endpoint, true).await,
        Command::Resume { endpoint } => commands::set_paused(&cfg, &endpoint, false).await,
        Command::Replay {
            endpoint,
            since,
            until,
            event_type,
            yes,
        } => {
            let now = std::time::SystemTime::now();
            let until = until.map_or(std::time::Duration::ZERO, |u| u.ago(now));
            commands::replay(&cfg, &endpoint, since.ago(now), until, &event_type, yes)
                .await
                .map(drop)
        }
        Command::Publish {
            event_type,
            org,
            entity_type,
            entity_id,
            payload,
        } => {
            let e = NewEvent {
                event_type,
                org_id: org,
                entity_type,
                entity_id,
                payload,
            };
            commands::publish(&cfg, &e).await.map(drop)
        }
        Command::Statements { name, list } => {
            commands::statements(&cfg, name.as_deref(), list).await
        }
        Command::CheckConfig => {
            println!(
                "config OK: table {}, sinks: {}, listen {}, poll every {}",
                cfg.qualified_table(),
                cfg.sink_summary(),
                cfg.listen,
                humantime::format_duration(cfg.poll_interval)
            );
            for sink in cfg.sinks() {
                for public in sink.keys.map(|k| k.get().public_keys()).unwrap_or_default() {
                    println!(
                        "{} {:?} signs v1a; receivers verify with {public}",
                        sink.section, sink.name
                    );
                }
            }
            Ok(())
        }
        Command::Dev { .. } | Command::Keygen { .. } => unreachable!("handled above"),
    }
}

/// The secrets `command` uses: the others stay unread, so a variable only `run` needs (a
/// webhook's secret, SSE_TOKEN_SECRET) need not be set for `migrate --print` or `status`.
fn needs(command: &Command) -> Needs {
    match command {
        Command::Run | Command::CheckConfig => Needs::Everything,
        Command::Migrate { print: true, .. }
        | Command::Migrate {
            print_grants: Some(_),
            ..
        } => Needs::Nothing,
        Command::Migrate { .. }
        | Command::Status { .. }
        | Command::Retry { .. }
        | Command::Skip { .. }
        | Command::Purge { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Replay { .. }
        | Command::Publish { .. }
        | Command::Statements { .. }
        | Command::Dev { .. } => Needs::Database,
        Command::Keygen { .. } => Needs::Nothing,
    }
}

/// glibc's malloc serves a block above its mmap threshold with a mapping of its own, given
/// back when freed; but the threshold rises to the largest block freed (up to 32 MiB), so
/// after a few 10 MB payloads such blocks come from the heap arenas, and a heap only
/// shrinks from its top: the relay stayed at 120-170 MB after a burst of large events. A
/// fixed threshold keeps large blocks in mappings (a mmap and munmap per block over
/// 128 KiB, a few microseconds), and memory returns to the system after the burst.
#[allow(unsafe_code)] // the one call into C; nothing else in the crate needs unsafe
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}
