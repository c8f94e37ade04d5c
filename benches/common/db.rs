//! Where the benchmarks' databases live: `DATABASE_URL`'s server, or a throwaway cluster
//! this process starts and stops. Every repetition gets a database of its own.

use anyhow::Context;
use outbox_relay::pgtemp::TempCluster;
use outbox_relay::secret::Secret;

/// Where databases are created: `DATABASE_URL`'s server, or a throwaway cluster kept for
/// the whole run.
pub struct DbServer {
    pub admin_url: String,
    /// Kept alive (stopped on drop) when this process started it.
    pub cluster: Option<TempCluster>,
    /// The server's postmaster, when it runs on this machine (its CPU is then measured).
    pub postmaster: Option<u32>,
}

impl DbServer {
    /// `DATABASE_URL`'s server if set, else a throwaway cluster started with `cluster_opts`
    /// appended to [`TempCluster`]'s server options (`-c name=value ...`; they win).
    pub fn start(cluster_opts: &str) -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(Self {
                admin_url: url,
                cluster: None,
                postmaster: None,
            });
        }
        let cluster = TempCluster::start_with(cluster_opts)
            .context("starting a throwaway PostgreSQL cluster")?;
        Ok(Self {
            admin_url: cluster.url("postgres"),
            cluster: Some(cluster),
            postmaster: None,
        })
    }

    /// Finds the postmaster through `postmaster.pid` in the data directory, when the server
    /// is local and the file readable (a remote `DATABASE_URL`: no PostgreSQL CPU figure).
    pub async fn find_postmaster(&mut self) -> anyhow::Result<()> {
        let dir: String = self
            .admin()
            .await?
            .query_one("SELECT current_setting('data_directory')", &[])
            .await?
            .get(0);
        self.postmaster = std::fs::read_to_string(format!("{dir}/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .filter(|pid: &u32| crate::common::proc::proc_stat(&pid.to_string()).is_ok());
        Ok(())
    }

    pub async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        outbox_relay::db::connect(&Secret::new(self.admin_url.clone())).await
    }

    /// A new empty database; returns (name, url).
    pub async fn create_db(&self) -> anyhow::Result<(String, String)> {
        let name = format!("outbox_bench_{}", uuid::Uuid::new_v4().simple());
        self.admin()
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(&self.admin_url).context("DATABASE_URL is not a URL")?;
        url.set_path(&format!("/{name}"));
        Ok((name, url.to_string()))
    }

    pub async fn drop_db(&self, name: &str) -> anyhow::Result<()> {
        self.admin()
            .await?
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        Ok(())
    }

    /// "PostgreSQL 15.20 (throwaway local cluster: fsync=off, ...)" and the like.
    pub async fn describe(&self) -> anyhow::Result<String> {
        let c = self.admin().await?;
        let mut settings = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_buffers",
            "autovacuum",
            "shared_preload_libraries",
        ] {
            let row = c.query_one(&format!("SHOW {name}"), &[]).await?;
            settings.push(format!("{name}={}", row.get::<_, String>(0)));
        }
        let version: String = c.query_one("SHOW server_version", &[]).await?.get(0);
        let origin = if self.cluster.is_some() {
            "throwaway local cluster"
        } else {
            "DATABASE_URL"
        };
        Ok(format!(
            "PostgreSQL {version} ({origin}: {})",
            settings.join(", ")
        ))
    }
}
