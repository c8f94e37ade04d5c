//! What the relay checks about the server it reached: that it can write there (not a
//! standby in recovery), and that its dedicated connections, idle by design, are not closed
//! by the server's `idle_session_timeout`.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The line an operator sees when `database_url` reaches a server the relay cannot write to.
pub const READ_ONLY: &str = "database_url points at a read-only server (a standby in \
    recovery, or default_transaction_read_only = on): point it at the primary, or list both \
    hosts with target_session_attrs=read-write";

/// Whether this session cannot write: the server is a standby in recovery, or its
/// transactions are read-only by default. A standby that gets promoted turns writable in
/// the same session: callers ask again rather than reconnect.
pub async fn read_only(client: &Client) -> anyhow::Result<bool> {
    let row = super::statements::query_one(
        client,
        "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
        &[],
    )
    .await?;
    Ok(row.get(0))
}

/// For commands that write (migrate, retry, skip, purge, publish): an error saying
/// [`READ_ONLY`] instead of the first statement's "cannot execute UPDATE in a read-only
/// transaction".
pub async fn ensure_writable(client: &Client) -> anyhow::Result<()> {
    if read_only(client).await? {
        anyhow::bail!("{READ_ONLY}");
    }
    Ok(())
}

/// Whether a failed statement was refused because the server is read-only (a pooled
/// connection that reached a standby).
pub fn is_read_only(e: &anyhow::Error) -> bool {
    super::has_sql_state(e, &[SqlState::READ_ONLY_SQL_TRANSACTION])
}

/// Turns the server's `idle_session_timeout` (PostgreSQL 14 and later) off for this session:
/// for the LISTEN and wake-lock connections, which are idle by design between
/// notifications (a closed one costs a reconnect, a warning and a claim each time). Pooled
/// connections keep the server's setting: one closed while idle is replaced when next
/// taken. On older servers (no such setting) this does nothing.
pub async fn keep_idle_session(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "SELECT set_config('idle_session_timeout', '0', false)
              WHERE current_setting('server_version_num')::int >= 140000",
        )
        .await?;
    Ok(())
}

/// Subscribes this session to the table's NOTIFY channel. The channel is a name the config
/// validated; it is quoted as an identifier all the same.
pub async fn listen(client: &Client, channel: &str) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("LISTEN {}", super::ident::quote_ident(channel)))
        .await?;
    Ok(())
}

/// The cheapest round trip: proves an idle connection (LISTEN's) is still alive, since a
/// half-open TCP connection otherwise looks idle forever.
pub async fn ping(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.simple_query("SELECT 1").await.map(drop)
}
