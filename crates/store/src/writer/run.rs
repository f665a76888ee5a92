//! Arbitrary short writes through the group-commit writer. On SQLite every write must come from
//! the writer's one connection: a second writing connection waits on the database lock (and its
//! pooled connection with it) behind every group commit, which under load ends in 5xx answers.

use super::{Op, Writer};
use crate::{Result, StoreError, Tx};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// What a write job returns: a future borrowing the writer's transaction.
pub type WriteFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A job with its result type erased, so jobs of any type share the writer's queue.
pub(super) trait Job: Send + Sync {
    /// Runs inside the group's transaction; the result is kept until the group commits. May run
    /// twice (a failed group is retried item by item), so the job is `Fn`.
    fn run<'a>(&'a self, tx: &'a mut Tx) -> WriteFuture<'a, ()>;
    /// Answers the caller with the kept result, once the group has committed.
    fn answer(self: Box<Self>);
    fn fail(self: Box<Self>, e: StoreError);
}

struct Typed<S, T, F> {
    input: S,
    f: F,
    out: Mutex<Option<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<S, T, F> Job for Typed<S, T, F>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    F: for<'a> Fn(&'a S, &'a mut Tx) -> WriteFuture<'a, T> + Send + Sync + 'static,
{
    fn run<'a>(&'a self, tx: &'a mut Tx) -> WriteFuture<'a, ()> {
        Box::pin(async move {
            let v = (self.f)(&self.input, tx).await?;
            *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
            Ok(())
        })
    }

    fn answer(self: Box<Self>) {
        let out = self.out.into_inner().unwrap_or_else(|e| e.into_inner());
        let _ =
            self.reply.send(out.ok_or_else(|| {
                StoreError::Corrupt("writer job committed without a result".into())
            }));
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

impl Writer {
    /// Runs `f(&input, tx)` inside the writer's next group transaction (after that group's
    /// claims) and answers with its result once the group has committed. `input` is passed by
    /// reference so the future may borrow it. `f` must be short (it holds the group's commit)
    /// and must not rely on a rollback: whatever it wrote commits with the group unless it
    /// returns an error, which fails the group (retried then item by item, `f` running again).
    pub async fn run<S, T, F>(&self, input: S, f: F) -> Result<T>
    where
        S: Send + Sync + 'static,
        T: Send + 'static,
        F: for<'a> Fn(&'a S, &'a mut Tx) -> WriteFuture<'a, T> + Send + Sync + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Typed {
            input,
            f,
            out: Mutex::new(None),
            reply,
        };
        self.tx
            .send(Op::Run(Box::new(job)))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Db, on_tx};
    use std::sync::Arc;
    use tokio::sync::Notify;

    async fn insert_nonce(tx: &mut Tx, nonce: &str) -> Result<u64> {
        Ok(on_tx!(tx, c => sqlx::query(
            "INSERT INTO webhook_nonces (provider_id, nonce, received_at) VALUES ('p', $1, 0)")
            .bind(nonce).execute(&mut *c).await.map(|r| r.rows_affected()))?)
    }

    /// A job that fails its group is answered with its error, and its neighbour, retried alone,
    /// commits exactly once with the result of the run that committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_fails_alone() {
        let path = std::env::temp_dir().join(format!("cx-writer-{}.db", uuid::Uuid::now_v7()));
        let db = Db::open_sqlite(&path).await.expect("open");
        db.migrate().await.expect("migrate");
        let (w, _done) = Writer::start(db.clone(), 1).expect("writer");
        // Hold the writer in a first group until both jobs below are queued, so they share the
        // next one.
        let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let held = tokio::spawn({
            let w = w.clone();
            let signals = (started.clone(), gate.clone());
            async move {
                w.run(signals, |(started, gate), _tx| {
                    Box::pin(async move {
                        started.notify_one();
                        gate.notified().await;
                        Ok(())
                    })
                })
                .await
            }
        });
        started.notified().await;
        let bad = tokio::spawn({
            let w = w.clone();
            async move {
                w.run((), |_, _tx| {
                    Box::pin(async { Err::<(), _>(StoreError::Conflict("test")) })
                })
                .await
            }
        });
        let good = tokio::spawn({
            let w = w.clone();
            async move { w.run((), |_, tx| Box::pin(insert_nonce(tx, "once"))).await }
        });
        while w.tx.max_capacity() - w.tx.capacity() < 2 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        held.await.expect("task").expect("held job");
        assert!(matches!(
            bad.await.expect("task"),
            Err(StoreError::Conflict("test"))
        ));
        assert_eq!(good.await.expect("task").expect("good job"), 1);
        let n: i64 = crate::on!(&db, p => sqlx::query_scalar("SELECT COUNT(*) FROM webhook_nonces WHERE nonce = 'once'")
            .fetch_one(p).await)
        .expect("count");
        assert_eq!(n, 1);
        drop(w);
        db.close().await;
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
}
