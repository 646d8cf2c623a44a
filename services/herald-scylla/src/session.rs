//! Talking to the cluster: paged reads as streams or vectors, point reads, whole-table scans,
//! and statements run as logged batches.

use futures_util::TryStreamExt;
use herald_ports::projection::ProjectionError;
use scylla::deserialize::row::DeserializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::layout::storage;
use crate::statements::Stmt;
use crate::{MAX_BATCH_STATEMENTS, ScyllaProjection};

impl ScyllaProjection {
    /// The rows of a (possibly large) result, paged as they are read.
    pub(crate) async fn stream<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<impl futures_util::Stream<Item = Result<R, ProjectionError>> + Unpin, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        Ok(self
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(|e| storage("read")(&e))?
            .rows_stream::<R>()
            .map_err(|e| storage("read")(&e))?
            .map_err(|e| storage("read")(&e)))
    }

    /// All rows of a (possibly large) result, paged.
    pub(crate) async fn all<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.stream(st, values).await?.try_collect().await
    }

    /// The first row of a point read.
    pub(crate) async fn one<R>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Option<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| storage("read")(&e))?
            .into_rows_result()
            .map_err(|e| storage("read")(&e))?
            .maybe_first_row::<R>()
            .map_err(|e| storage("read")(&e))
    }

    /// Runs statements as logged batches of at most [`MAX_BATCH_STATEMENTS`], never splitting
    /// a group (one event's writes), one batch after the other.
    pub(crate) async fn run_batches(&self, groups: Vec<Vec<Stmt>>) -> Result<(), ProjectionError> {
        let mut pending: Vec<Stmt> = Vec::new();
        for group in groups {
            if !pending.is_empty() && pending.len() + group.len() > MAX_BATCH_STATEMENTS {
                self.run_batch(std::mem::take(&mut pending)).await?;
            }
            pending.extend(group);
        }
        if !pending.is_empty() {
            self.run_batch(pending).await?;
        }
        Ok(())
    }

    pub(crate) async fn run_batch(&self, stmts: Vec<Stmt>) -> Result<(), ProjectionError> {
        let mut b = Batch::new(BatchType::Logged);
        b.set_consistency(self.config.consistency);
        b.set_is_idempotent(true);
        let mut values = Vec::with_capacity(stmts.len());
        for s in stmts {
            b.append_statement(s.st);
            values.push(s.values);
        }
        self.session
            .batch(&b, values)
            .await
            .map_err(|e| storage("write")(&e))?;
        Ok(())
    }

    /// A whole table, by token range (snapshots and tests only).
    pub(crate) async fn scan<R>(&self, cql: &str) -> Result<Vec<R>, ProjectionError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let mut st = scylla::statement::Statement::new(cql);
        st.set_consistency(self.config.consistency);
        self.session
            .query_iter(st, ())
            .await
            .map_err(|e| storage("scan")(&e))?
            .rows_stream::<R>()
            .map_err(|e| storage("scan")(&e))?
            .try_collect()
            .await
            .map_err(|e| storage("scan")(&e))
    }
}
