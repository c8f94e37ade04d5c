//! The one-shot commands: migrate, status, retry, skip, purge, publish, statements (and `dev` in its
//! module). Each opens a checked connection, runs the operation in [`crate::db::admin`]
//! (which the dashboard shares) and prints what it did.

pub mod dev;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::db::admin::{self, BlockedKey, IdAction, NewEvent, On};
use crate::db::audit::{self, Action};
use crate::db::privileges::{self, Use};
use crate::db::queries::Queries;
use crate::db::{self, migrate, shape};

/// Connects, checks the role's privileges for `what`, and reads the table's shape.
async fn open(cfg: &Config, what: Use) -> anyhow::Result<(tokio_postgres::Client, Queries)> {
    let client = db::connect(cfg.database_url.get()).await?;
    privileges::check(&client, &cfg.table_settings(), what).await?;
    let q = queries(&client, cfg).await?;
    Ok((client, q))
}

/// The statements for the config's table, as its shape (read on `client`) renders them.
async fn queries(client: &tokio_postgres::Client, cfg: &Config) -> anyhow::Result<Queries> {
    let settings = cfg.table_settings();
    let shape = shape::inspect(client, &settings.qualified_table()).await?;
    Ok(Queries::for_table(&settings, &shape))
}

/// Who runs this command, for the audit log: the OS user (by uid, not from the
/// environment), or `uid N` when it has no name.
fn os_user() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// Records a command's action in the audit log (see [`audit`]). The action is done either
/// way: a failure to record is a warning, not an error. `sudo` is noted with the user who
/// ran it.
async fn record(
    client: &tokio_postgres::Client,
    q: &Queries,
    action: Action,
    target: &str,
    mut detail: serde_json::Value,
) {
    if let (Ok(by), Some(map)) = (std::env::var("SUDO_USER"), detail.as_object_mut()) {
        map.insert("sudo_user".into(), by.into());
    }
    let actor = os_user();
    let entry = audit::Entry {
        actor: &actor,
        via: audit::Via::Cli,
        action,
        target,
        detail,
    };
    if let Err(e) = audit::record(On::Client(client), q, &entry).await {
        eprintln!(
            "warning: done, but not recorded in the audit log: {}",
            audit::explain(&e)
        );
    }
}

/// [`open`] for a command that writes: a clear error on a standby (see
/// [`db::server::READ_ONLY`]). `status` reads, and works on a standby too.
async fn open_writable(
    cfg: &Config,
    what: Use,
) -> anyhow::Result<(tokio_postgres::Client, Queries)> {
    let (client, q) = open(cfg, what).await?;
    db::server::ensure_writable(&client).await?;
    Ok((client, q))
}

/// `migrate [--print]`.
pub async fn migrate(cfg: &Config, print: bool) -> anyhow::Result<()> {
    let settings = cfg.table_settings();
    if print {
        print!("{}", migrate::script(&settings));
        return Ok(());
    }
    let mut client = db::connect(cfg.database_url.get()).await?;
    db::server::ensure_writable(&client).await?;
    let managed = migrate::managed_indexes(&settings);
    let before = migrate::existing(&client, &settings, &managed).await?;
    migrate::run(&mut client, &settings).await?;
    let shape = shape::inspect(&client, &cfg.qualified_table()).await?;
    for (ix, had) in managed.iter().zip(before) {
        let what = match (had, ix.wanted) {
            (false, _) if ix.retired() => continue,
            (true, _) if ix.retired() => "dropped: replaced",
            (false, true) => "created",
            (true, true) => "kept",
            (true, false) => {
                "dropped: this config does not use it (migrate again after turning it on)"
            }
            (false, false) => "not created: this config does not use it",
        };
        eprintln!("index {} for {}: {what}", ix.name, ix.serves);
    }
    eprintln!(
        "{} is ready (id {}, status {}); NOTIFY channel {:?}",
        cfg.qualified_table(),
        shape.id_type,
        shape.status_type,
        settings.channel()
    );
    if !shape.id_has_default {
        eprintln!(
            "id has no database default (an ORM such as Prisma fills it in): an INSERT \
             from SQL must give one, e.g. gen_random_uuid() for a uuid or text id"
        );
    }
    if let Some(caveat) = shape.created_at_caveat() {
        eprintln!("{caveat}");
    }
    eprintln!(
        "a runtime role that is neither superuser nor owner: `outbox-relay migrate \
         --print-grants ROLE` prints its GRANTs"
    );
    Ok(())
}

/// `statements [NAME | --list]`: the relay's SQL for this table and config (its shape decides
/// id casts and clocks, its ordered types the claim's gate).
pub async fn statements(cfg: &Config, name: Option<&str>, list: bool) -> anyhow::Result<()> {
    let client = db::connect(cfg.database_url.get()).await?;
    let all = queries(&client, cfg).await?.named();
    match name {
        _ if list => all.iter().for_each(|(n, _)| println!("{n}")),
        Some(name) => {
            let (_, sql) = all.iter().find(|(n, _)| *n == name).with_context(|| {
                format!("no statement named {name:?}; `outbox-relay statements --list` names them")
            })?;
            println!("{}", sql.trim());
        }
        None => all
            .iter()
            .for_each(|(n, sql)| println!("-- {n}\n{};\n", sql.trim())),
    }
    Ok(())
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub table: String,
    /// Rows per status value (unknown values included, NULL as "NULL").
    pub counts: std::collections::BTreeMap<String, i64>,
    pub oldest_pending_age_seconds: Option<f64>,
    pub dead_letters: i64,
    /// Entity keys held up by a FAILED event (ordered mode only; at most
    /// [`admin::BLOCKED_KEYS_SHOWN`]), oldest first.
    pub blocked_keys: Vec<BlockedKey>,
    /// Endpoints whose events are held: paused by an operator, or by a circuit breaker
    /// (names; `paused` has the details).
    pub paused_endpoints: Vec<String>,
    /// Why each is paused, since when, and for a circuit when it probes next.
    pub paused: Vec<admin::Paused>,
}

/// Gathers the status report.
pub async fn status_report(cfg: &Config) -> anyhow::Result<StatusReport> {
    let (client, q) = open(cfg, Use::Status).await?;
    let on = On::Client(&client);
    let counts = admin::status_counts(on, &q).await?;
    let oldest = admin::oldest_pending(on, &q).await?;
    let blocked_keys = if cfg.ordered_types().is_empty() {
        Vec::new()
    } else {
        admin::blocked_keys(on, &q).await?
    };
    let paused = admin::paused_endpoints(on, &q).await?;
    Ok(StatusReport {
        paused_endpoints: paused.iter().map(|p| p.endpoint.clone()).collect(),
        paused,
        table: cfg.qualified_table(),
        dead_letters: counts["FAILED"],
        counts,
        oldest_pending_age_seconds: oldest,
        blocked_keys,
    })
}

/// One paused endpoint as `status` prints it.
fn describe_pause(p: &admin::Paused) -> String {
    let ago = |s: f64| humantime::format_duration(Duration::from_secs(s.max(0.0) as u64));
    let mut line = format!("{:<24} {}", p.endpoint, p.reason.as_str());
    match p.reason {
        admin::PauseReason::Operator => {
            line += &format!(" since {}", p.since);
            if let Some(by) = &p.by {
                line += &format!(" by {by}");
            }
        }
        admin::PauseReason::Circuit | admin::PauseReason::Disabled => {
            if let Some(s) = p.failing_for_s {
                line += &format!(", failing for {}", ago(s));
            }
            if let Some(s) = p.probe_in_s {
                line += &format!(", next probe in {}", ago(s));
            }
            if let Some(e) = &p.last_error {
                line += &format!(", last error: {e}");
            }
        }
    }
    crate::logging::escape_controls(&line).into_owned()
}

/// `status [--json]`.
pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let r = status_report(cfg).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{}", r.table);
    for (status, n) in &r.counts {
        let note = match status.as_str() {
            "PENDING" => r
                .oldest_pending_age_seconds
                .map(|s| {
                    format!(
                        "  oldest {}",
                        humantime::format_duration(Duration::from_secs(s as u64))
                    )
                })
                .unwrap_or_default(),
            "FAILED" if *n > 0 => "  dead letters: `outbox-relay retry --failed` to resend".into(),
            _ => String::new(),
        };
        println!("  {status:<12} {n:>10}{note}");
    }
    if !r.paused.is_empty() {
        println!("paused endpoints (their events are held; `outbox-relay resume --endpoint NAME` or the dashboard resumes one):");
        for p in &r.paused {
            println!("  {}", describe_pause(p));
        }
    }
    if !r.blocked_keys.is_empty() {
        println!(
            "blocked entity keys (next event waits; `outbox-relay retry --id` or `skip --id` the head):"
        );
        for k in &r.blocked_keys {
            println!(
                "  {}/{}  head {}  {} waiting  {}",
                k.entity_type,
                k.entity_id,
                k.event_id,
                k.waiting,
                k.error_message.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `retry --id` and `skip --id`: applies `action`, names each id it did not change and
/// why (`not_done`), and wakes the relays when any changed. Returns how many changed.
async fn by_ids(
    cfg: &Config,
    action: IdAction,
    ids: &[String],
    not_done: &str,
) -> anyhow::Result<u64> {
    let (client, q) = open_writable(cfg, Use::Change).await?;
    let on = On::Client(&client);
    let doing = match action {
        IdAction::Retry => "retrying",
        IdAction::Skip => "skipping",
    };
    let done: HashSet<String> = admin::by_ids(on, &q, action, ids)
        .await
        .with_context(|| format!("{doing} events (are the ids of the table's id type?)"))?
        .into_iter()
        .collect();
    for id in ids.iter().filter(|id| !done.contains(*id)) {
        eprintln!("{id}: {not_done}");
    }
    if !done.is_empty() {
        admin::wake_relays(on, &cfg.table_settings().channel()).await?;
        let done: Vec<String> = ids
            .iter()
            .filter(|id| done.contains(*id))
            .cloned()
            .collect();
        let (target, detail) = audit::by_ids(&done);
        record(&client, &q, action.into(), &target, detail).await;
    }
    Ok(done.len() as u64)
}

/// `skip --id ...`. Returns how many events were skipped.
pub async fn skip(cfg: &Config, ids: &[String]) -> anyhow::Result<u64> {
    let n = by_ids(
        cfg,
        IdAction::Skip,
        ids,
        "not skipped (no such event, or it is not FAILED, or already skipped)",
    )
    .await?;
    eprintln!("{n} event(s) skipped");
    Ok(n)
}

/// `retry --id ...` or `retry --failed [--type GLOB]`. Returns how many rows went back.
pub async fn retry(cfg: &Config, ids: &[String], event_type: Option<&str>) -> anyhow::Result<u64> {
    let total = if !ids.is_empty() {
        let why = "not retried (no such event, or it is not FAILED)";
        by_ids(cfg, IdAction::Retry, ids, why).await?
    } else {
        let (client, q) = open_writable(cfg, Use::Change).await?;
        let glob = event_type.unwrap_or("*");
        let total = admin::retry_failed(
            &client,
            &q,
            &cfg.table_settings().channel(),
            glob,
            |total| eprintln!("... {total} retried so far"),
        )
        .await?;
        if total > 0 {
            let target = format!("FAILED events of type {glob:?}");
            let detail = serde_json::json!({ "count": total, "type": glob });
            record(&client, &q, Action::Retry, &target, detail).await;
        }
        total
    };
    eprintln!("{total} event(s) back to PENDING");
    Ok(total)
}

/// `purge --older-than D`. Returns how many rows were deleted.
pub async fn purge(cfg: &Config, older_than: Duration) -> anyhow::Result<u64> {
    let (client, q) = open_writable(cfg, Use::Purge).await?;
    let total = admin::purge(&client, &q, older_than, |total| {
        if total % (admin::BATCH as u64 * 10) == 0 {
            eprintln!("... {total} deleted so far");
        }
    })
    .await?;
    let age = humantime::format_duration(older_than).to_string();
    if total > 0 {
        let target = format!("COMPLETED events older than {age}");
        let detail = serde_json::json!({ "count": total, "older_than": age });
        record(&client, &q, Action::Purge, &target, detail).await;
    }
    eprintln!("{total} COMPLETED event(s) older than {age} deleted");
    Ok(total)
}

/// `replay --endpoint NAME --since WHEN [--until WHEN] [--type GLOB] [--yes]`: counts the
/// events NAME accepted in the window, and with `yes` sends them to NAME again (and to no
/// other sink). Returns the count, or how many were put back.
pub async fn replay(
    cfg: &Config,
    endpoint: &str,
    since: Duration,
    until: Duration,
    glob: &str,
    yes: bool,
) -> anyhow::Result<u64> {
    let names: Vec<&str> = cfg.sinks().iter().map(|s| s.name).collect();
    let r = admin::Replay::new(&names, endpoint, since, until, glob).map_err(anyhow::Error::msg)?;
    let (client, q) = open_writable(cfg, Use::Change).await?;
    let window = if until.is_zero() {
        format!("the last {}", humantime::format_duration(since))
    } else {
        format!(
            "from {} ago to {} ago",
            humantime::format_duration(since),
            humantime::format_duration(until)
        )
    };
    if !yes {
        let n = admin::replay_count(On::Client(&client), &q, &r).await?;
        eprintln!(
            "{n} event(s) of type {glob:?} created in {window} were delivered to {endpoint:?} \
             and would be sent to it again (to no other sink); nothing changed: add --yes to \
             replay them"
        );
        return Ok(n);
    }
    let total = admin::replay(&client, &q, &cfg.table_settings().channel(), &r, |total| {
        if total % (admin::BATCH as u64 * 10) == 0 {
            eprintln!("... {total} put back so far");
        }
    })
    .await?;
    record(
        &client,
        &q,
        Action::Replay,
        endpoint,
        audit::replay(&r, total),
    )
    .await;
    eprintln!(
        "{total} event(s) of type {glob:?} created in {window} back to PENDING, for {endpoint:?} \
         only"
    );
    Ok(total)
}

/// `pause` / `resume` (`paused` false) `endpoint` on every relay on the table, as the
/// dashboard's buttons do. Resuming releases the held events and wakes the relays.
pub async fn set_paused(cfg: &Config, endpoint: &str, paused: bool) -> anyhow::Result<()> {
    let names: Vec<&str> = cfg.sinks().iter().map(|s| s.name).collect();
    if !names.contains(&endpoint) {
        anyhow::bail!(
            "no sink named {endpoint:?} in the config (its sinks: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    let (client, q) = open_writable(cfg, Use::Pause).await?;
    let on = On::Client(&client);
    let channel = cfg.table_settings().channel();
    let before = admin::paused_endpoints(on, &q)
        .await?
        .into_iter()
        .find(|p| p.endpoint == endpoint);
    let mut detail = serde_json::json!({ "changed": false });
    if paused {
        admin::pause_endpoint(on, &q, endpoint, &os_user()).await?;
        detail["changed"] = before
            .as_ref()
            .is_none_or(|p| p.reason != admin::PauseReason::Operator)
            .into();
    } else {
        detail["changed"] = admin::resume_endpoint(on, &q, endpoint).await?.into();
    }
    if let Some(p) = &before {
        detail["was"] = p.reason.as_str().into();
    }
    let released = if paused {
        admin::notify(on, &channel, crate::sinks::pause::ENDPOINTS_CHANGED).await?;
        0
    } else {
        let n = crate::sinks::pause::unpaused(on, &q, &channel, endpoint).await?;
        detail["released"] = n.into();
        n
    };
    let action = if paused {
        Action::Pause
    } else {
        Action::Resume
    };
    record(&client, &q, action, endpoint, detail).await;
    match (paused, before) {
        (true, Some(p)) if p.reason == admin::PauseReason::Operator => {
            eprintln!("{endpoint:?} was paused already (since {})", p.since)
        }
        (true, _) => eprintln!(
            "{endpoint:?} paused on every relay: its events are held until `outbox-relay resume --endpoint {endpoint}`"
        ),
        (false, None) => eprintln!("{endpoint:?} was not paused; {released} held event(s) released"),
        (false, Some(p)) => eprintln!(
            "{endpoint:?} resumed (it was {}); {released} held event(s) released",
            match p.reason {
                admin::PauseReason::Operator => "paused",
                admin::PauseReason::Circuit => "held by its open circuit",
                admin::PauseReason::Disabled => "disabled after failing too long",
            }
        ),
    }
    Ok(())
}

/// `publish`: prints the new event's id.
pub async fn publish(cfg: &Config, e: &NewEvent) -> anyhow::Result<String> {
    let (mut client, q) = open_writable(cfg, Use::Publish).await?;
    let id = admin::publish(&mut client, &q, e).await?;
    println!("{id}");
    Ok(id)
}
