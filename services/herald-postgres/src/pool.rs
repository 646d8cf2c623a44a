//! A bounded pool of synchronous PostgreSQL connections, used from tokio's blocking threads.

use std::collections::HashMap;
use std::sync::Mutex;

use herald_ports::projection::ProjectionError;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

/// Most idle connections kept.
pub const POOL_SIZE: usize = 8;

/// Most prepared statements a connection keeps ([`Statements`]). The reads and writes use a set of
/// about thirty (the inbox page has one per filter); past this bound the cache starts over.
pub const MAX_CACHED_STATEMENTS: usize = 64;

/// A connection's prepared statements, by their SQL. A statement given as text is prepared
/// again at every call: a round trip to parse and describe it before the one that runs it.
/// The projector's writes run the same few statements for every event, so each connection
/// prepares each once. Prepared statements belong to the session (a rollback keeps them); the
/// cache goes with its connection, and is emptied after any error (a statement the server
/// refuses to run again, say after another replica changed the schema, is prepared afresh).
#[derive(Default)]
pub(crate) struct Statements(HashMap<String, Statement>);

impl Statements {
    /// The statement for `sql`, prepared on `client` the first time.
    pub(crate) fn get(
        &mut self,
        client: &mut impl postgres::GenericClient,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        if self.0.len() >= MAX_CACHED_STATEMENTS {
            self.0.clear();
        }
        let s = client.prepare(sql)?;
        self.0.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// A connection outside a transaction, running its statements prepared ([`Statements`]): the
/// reads of the gateway and the fanout.
pub(crate) struct Prepared<'a> {
    client: &'a mut Client,
    statements: &'a mut Statements,
}

impl Prepared<'_> {
    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query(&statement, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query_opt(&statement, params)
    }
}

/// A pooled connection and its prepared statements.
struct Conn {
    client: Client,
    statements: Statements,
}

/// A PostgreSQL error with the server's message ("db error" alone says nothing).
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

pub(crate) struct Pool {
    url: String,
    idle: Mutex<Vec<Conn>>,
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
        self.with_statements(|c, _| f(c))
    }

    /// [`Pool::with`], running statements prepared.
    pub(crate) fn prepared<T>(
        &self,
        f: impl FnOnce(&mut Prepared<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, ProjectionError> {
        self.with_statements(|client, statements| f(&mut Prepared { client, statements }))
    }

    /// [`Pool::with`], with the connection's prepared statements.
    pub(crate) fn with_statements<T>(
        &self,
        f: impl FnOnce(&mut Client, &mut Statements) -> Result<T, postgres::Error>,
    ) -> Result<T, ProjectionError> {
        let conn = self.idle.lock().expect("pool lock").pop();
        let mut conn = match conn {
            Some(c) if !c.client.is_closed() => c,
            _ => Conn {
                client: Client::connect(&self.url, NoTls).map_err(|e| {
                    ProjectionError::Storage(format!("cannot connect to PostgreSQL: {e}"))
                })?,
                statements: Statements::default(),
            },
        };
        let out = f(&mut conn.client, &mut conn.statements)
            .map_err(|e| ProjectionError::Storage(pg_message(&e)));
        if out.is_err() {
            conn.statements.clear();
        }
        if !conn.client.is_closed() {
            let mut idle = self.idle.lock().expect("pool lock");
            if idle.len() < POOL_SIZE {
                idle.push(conn);
            }
        }
        out
    }
}
