//! Connection settings from one URL, for both connections the connector opens: an ordinary
//! SQL session (tokio-postgres: preflight checks, slot creation, clean-up, migrations) and the
//! replication session (pgwire-replication: the WAL stream).
//!
//! tokio-postgres does not know `sslmode=verify-ca`/`verify-full`, so `sslmode` and
//! `sslrootcert` are taken out of the URL here and applied to both sessions.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use pgwire_replication::{ReplicationConfig, TlsConfig};
use tokio_postgres::config::Host;

use crate::tls::SslMode;

/// An SQL round trip that got no answer within the connector's `network_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Postgres did not answer within {0:?} (network_timeout); the connection looks dead (a NAT or firewall that dropped it, a frozen host) and is replaced")]
pub struct NoAnswer(pub Duration);

impl NoAnswer {
    /// As a retryable source error, saying what was being done.
    pub fn doing(&self, doing: &str) -> tidings_connectors_core::SourceError {
        tidings_connectors_core::SourceError::Transient {
            what: format!("{doing}: {self}"),
            source: None,
        }
    }
}

/// Wait at most `limit` for one SQL round trip `query`. A connection that died without a
/// reset never answers, and tokio-postgres would wait for it forever; the caller drops the
/// client on `Err` and connects again.
pub async fn within<T>(
    limit: Duration,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<Result<T, tokio_postgres::Error>, NoAnswer> {
    tokio::time::timeout(limit, query)
        .await
        .map_err(|_| NoAnswer(limit))
}

/// A round trip's result, or what went wrong with it in words (for logs).
pub fn answered<T>(
    answer: Result<Result<T, tokio_postgres::Error>, NoAnswer>,
) -> Result<T, String> {
    answer
        .map_err(|silent| silent.to_string())?
        .map_err(|e| crate::slot::describe(&e))
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Postgres URL: {0}")]
pub struct UrlError(pub String);

/// Where and how to connect.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub ssl: SslMode,
    pub ssl_root_cert: Option<PathBuf>,
    sql: tokio_postgres::Config,
    /// `verify-ca`: a name the server's certificate presents, learnt by the SQL session's
    /// handshake when the host is not one of them (see [`Settings::replication`]).
    cert_name: crate::tls::CertName,
}

impl Settings {
    /// Parse `postgres://user:password@host:port/db?sslmode=...` or `host=... user=...`.
    pub fn parse(url: &str) -> Result<Settings, UrlError> {
        let (rest, params) = take_ssl_params(url);
        let mut ssl = SslMode::default();
        let mut ssl_root_cert = None;
        for (k, v) in params {
            match k.as_str() {
                "sslmode" => ssl = v.parse().map_err(UrlError)?,
                _ => ssl_root_cert = Some(PathBuf::from(v)),
            }
        }
        let sql = tokio_postgres::Config::from_str(&rest).map_err(|e| UrlError(e.to_string()))?;
        let host = match sql.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = sql.get_ports().first().copied().unwrap_or(5432);
        let user = sql
            .get_user()
            .ok_or_else(|| {
                UrlError("no user: write it as postgres://USER:PASSWORD@HOST/DB".into())
            })?
            .to_owned();
        let password = sql
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let dbname = sql.get_dbname().unwrap_or(&user).to_owned();
        if host.starts_with('/')
            && matches!(
                ssl,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
        {
            return Err(UrlError(format!(
                "sslmode {} needs a TCP host, not the Unix socket {host}",
                ssl_name(ssl)
            )));
        }
        if matches!(ssl, SslMode::VerifyCa | SslMode::VerifyFull) && ssl_root_cert.is_none() {
            // Without a CA file the system's web roots would be used, which never sign a
            // database's certificate in practice: ask for the file.
            return Err(UrlError(format!(
                "sslmode {} needs sslrootcert=/path/to/ca.pem",
                ssl_name(ssl)
            )));
        }
        Ok(Settings {
            host,
            port,
            user,
            password,
            dbname,
            ssl,
            ssl_root_cert,
            sql,
            cert_name: Default::default(),
        })
    }

    /// `user@host:port/db`, without the password: for logs and errors.
    pub fn display(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// Open an ordinary SQL session. The connection task runs until the client is dropped.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = self.sql.clone();
        config.application_name("tidings");
        match self.ssl {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                spawn(config.connect(tokio_postgres::NoTls).await?)
            }
            SslMode::Prefer => {
                config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
                let tls = crate::tls::MakeRustls::new(
                    self.ssl,
                    self.ssl_root_cert.as_deref(),
                    self.cert_name.clone(),
                );
                spawn(config.connect(tls).await?)
            }
            _ => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = crate::tls::MakeRustls::new(
                    self.ssl,
                    self.ssl_root_cert.as_deref(),
                    self.cert_name.clone(),
                );
                spawn(config.connect(tls).await?)
            }
        }
    }

    /// Session settings of the walsender: pgoutput sends values in their text output form,
    /// which follows these, so table capture reads one format whatever the server's defaults
    /// (timestamps in ISO form and UTC, hex bytea). Options from the URL come first; ours win.
    fn replication_options(&self) -> String {
        let ours = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 -c bytea_output=hex";
        match self.sql.get_options() {
            Some(user) if !user.trim().is_empty() => format!("{user} {ours}"),
            _ => ours.to_owned(),
        }
    }

    /// The replication session's settings for `slot` and `publication`.
    pub fn replication(&self, slot: &str, publication: &str) -> ReplicationConfig {
        let tls = match self.ssl {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::default()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig {
                // pgwire-replication 0.5's verify-ca still refuses a host name the certificate
                // does not present (it misses rustls' NotValidForNameContext). The chain is
                // what verify-ca checks, so present the name the certificate has, as learnt by
                // the SQL session, which always connects first.
                sni_hostname: self.cert_name.get().filter(|n| *n != self.host),
                ..TlsConfig::verify_ca(self.ssl_root_cert.clone())
            },
            SslMode::VerifyFull => TlsConfig::verify_full(self.ssl_root_cert.clone()),
        };
        // A Unix socket never does TLS (as libpq): `prefer` means plain there.
        let tls = if self.host.starts_with('/') {
            TlsConfig::disabled()
        } else {
            tls
        };
        ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone().unwrap_or_default(),
            self.dbname.clone(),
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(tls)
        .with_application_name("tidings")
        .with_options(self.replication_options())
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Settings({}, sslmode {})",
            self.display(),
            ssl_name(self.ssl)
        )
    }
}

fn spawn<S, T>(
    (client, connection): (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres SQL connection ended");
        }
    });
    Ok(client)
}

fn ssl_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// Remove `sslmode` and `sslrootcert` from a URL's query or a key/value string.
fn take_ssl_params(url: &str) -> (String, Vec<(String, String)>) {
    let is_ssl = |k: &str| k == "sslmode" || k == "sslrootcert";
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), taken);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if is_ssl(k) => taken.push((k.to_owned(), v.to_owned())),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, taken)
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if is_ssl(k.trim()) => {
                    taken.push((k.trim().to_owned(), v.trim_matches('\'').to_owned()))
                }
                _ => kept.push(word),
            }
        }
        (kept.join(" "), taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        let s = Settings::parse(
            "postgres://app:s3cret@db.internal:6432/shop?sslmode=disable&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(s.host, "db.internal");
        assert_eq!(s.port, 6432);
        assert_eq!(s.user, "app");
        assert_eq!(s.password.as_deref(), Some("s3cret"));
        assert_eq!(s.dbname, "shop");
        assert_eq!(s.ssl, SslMode::Disable);
        assert_eq!(s.display(), "app@db.internal:6432/shop");

        let s = Settings::parse("host=/tmp port=5433 user=me dbname=x").unwrap();
        assert_eq!(s.host, "/tmp");
        assert_eq!(s.ssl, SslMode::Prefer);
        assert!(s.replication("a", "b").is_unix_socket());

        let s = Settings::parse("postgres://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem")
            .unwrap();
        assert_eq!(s.ssl, SslMode::VerifyFull);
        assert_eq!(s.ssl_root_cert, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn bad_urls_say_what_to_do() {
        assert!(Settings::parse("postgres://h/d")
            .unwrap_err()
            .0
            .contains("no user"));
        assert!(Settings::parse("postgres://u@h/d?sslmode=verify-full")
            .unwrap_err()
            .0
            .contains("sslrootcert"));
        assert!(Settings::parse("postgres://u@h/d?sslmode=maybe")
            .unwrap_err()
            .0
            .contains("sslmode"));
    }
}
