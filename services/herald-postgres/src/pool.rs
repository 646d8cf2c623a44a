//! A bounded pool of synchronous PostgreSQL connections, used from tokio's blocking threads.

use std::sync::Mutex;

use herald_ports::projection::ProjectionError;
use postgres::{Client, NoTls};

/// Most idle connections kept.
pub const POOL_SIZE: usize = 8;

/// A PostgreSQL error with the server's message ("db error" alone says nothing).
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

pub(crate) struct Pool {
    url: String,
    idle: Mutex<Vec<Client>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A sync client closes through its own small runtime, which must not run on an async
        // worker thread: close idle connections on a plain thread.
        let idle = std::mem::take(&mut *self.idle.lock().expect("pool lock"));
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("herald-pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}

impl Pool {
    pub(crate) fn new(url: &str) -> Self {
        Pool {
            url: url.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with a pooled connection (call from a blocking thread); a server error carries
    /// the server's message.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, ProjectionError> {
        let conn = self.idle.lock().expect("pool lock").pop();
        let mut conn = match conn {
            Some(c) if !c.is_closed() => c,
            _ => Client::connect(&self.url, NoTls).map_err(|e| {
                ProjectionError::Storage(format!("cannot connect to PostgreSQL: {e}"))
            })?,
        };
        let out = f(&mut conn).map_err(|e| ProjectionError::Storage(pg_message(&e)));
        if !conn.is_closed() {
            let mut idle = self.idle.lock().expect("pool lock");
            if idle.len() < POOL_SIZE {
                idle.push(conn);
            }
        }
        out
    }
}
