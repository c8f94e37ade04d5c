//! The `outbox-relay` binary: parse arguments, set up logging, run a command.

use std::process::ExitCode;

use clap::Parser;
use outbox_relay::cli::{Cli, Command};
use outbox_relay::commands::{self, NewEvent};
use outbox_relay::config::{Config, ConfigError, Overrides};
use tokio_util::sync::CancellationToken;

/// Exit status for a bad config or bad arguments (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    outbox_relay::logging::init(cli.global.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigError>() {
                eprintln!("outbox-relay: {c}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("outbox-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        database_url: cli.global.database_url.clone(),
    };
    if let Command::Dev = cli.command {
        return commands::dev::run(&overrides).await;
    }
    let cfg = Config::load(cli.global.config.as_deref(), &overrides)?;
    match cli.command {
        Command::Run => {
            let shutdown = CancellationToken::new();
            outbox_relay::shutdown::on_signal(shutdown.clone());
            outbox_relay::daemon::Daemon::start(cfg, shutdown)
                .await?
                .wait()
                .await
        }
        Command::Migrate { print } => commands::migrate(&cfg, print).await,
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
        Command::CheckConfig => {
            println!(
                "config OK: table {}, {} webhook(s), listen {}, poll every {}",
                cfg.qualified_table(),
                cfg.webhooks.len(),
                cfg.listen,
                humantime::format_duration(cfg.poll_interval)
            );
            Ok(())
        }
        Command::Dev => unreachable!("handled above"),
    }
}
