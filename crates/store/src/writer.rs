//! Group commit. Hot-path writes (accepting messages, recording delivery outcomes) go through a
//! writer task that drains whatever is waiting, writes it in one transaction and commits once, then
//! answers every caller. Durability holds (nobody is answered before the commit), while one fsync
//! serves many requests: this disk manages ~550 commits/s, so per-request commits would cap
//! throughput there.

use crate::idempotency::{NewIdempotency, claim_key};
use crate::messages::MessageRow;
use crate::outcomes::{is_plain_send, record_one, record_plain_sends};
use crate::{Db, Result, StoreError, Tx, on_tx};
use courierx_domain::Millis;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

mod run;
pub use run::WriteFuture;

/// A message to accept: its row, its first job and its attachments.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub row: MessageRow,
    pub job_id: String,
    pub run_at: Millis,
    pub max_attempts: i64,
    /// The job's rank within its project (see `courierx_domain::Priority::rank`).
    pub priority: i64,
    pub attachments: Vec<NewAttachment>,
}

impl NewMessage {
    /// The queue lane the job joins (see `crate::jobs`).
    fn lane(&self) -> String {
        crate::jobs::lane(&self.row.tenant_id, &self.row.project_id, self.priority)
    }
}

/// An attachment of a message being accepted; its bytes are stored once per tenant and hash.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub sha256: String,
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub data: Arc<[u8]>,
}

/// Messages accepted together, atomically, under at most one idempotency key.
#[derive(Debug, Clone)]
pub struct AcceptBatch {
    pub messages: Vec<NewMessage>,
    pub idempotency: Option<NewIdempotency>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    Accepted,
    /// Another request already holds this idempotency key; nothing was written.
    DuplicateKey,
}

pub use crate::jobs::{ClaimRequest, ClaimResult, Claimed};
pub use crate::outcomes::{AttemptRecord, Outcome, ProviderTry, SuppressedRecipient};

enum Op {
    Accept(AcceptBatch, oneshot::Sender<Result<AcceptOutcome>>),
    Record(Box<AttemptRecord>, oneshot::Sender<Result<bool>>),
    Claim(ClaimRequest, oneshot::Sender<Result<ClaimResult>>),
    /// Any other short write (see [`Writer::run`]).
    Run(Box<dyn run::Job>),
}

impl Op {
    fn weight(&self) -> usize {
        match self {
            Op::Accept(b, _) => b.messages.len().max(1),
            Op::Record(..) | Op::Claim(..) | Op::Run(..) => 1,
        }
    }
}

/// Cheap to clone; every clone feeds the same writer tasks.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

/// Items per transaction at most: bounds how long one commit holds the write lock.
const MAX_BATCH: usize = 1024;

/// Resolves once a writer has written everything queued to it and stopped.
pub type WriterDone = oneshot::Receiver<()>;

impl Writer {
    /// Starts `tasks` writers (1 for SQLite, whose writes serialise anyway; a few for Postgres).
    /// They stop when every `Writer` clone is dropped, after writing what is queued.
    ///
    /// SQLite's writer runs on its own thread. The group commit is the one serial stage of every
    /// accept, and on the shared runtime it waited behind HTTP handlers between its statements
    /// (each a hand-off to SQLite's worker thread); that wait, not SQLite, capped accepted
    /// requests per second. Postgres writers stay on the shared runtime, whose I/O driver owns
    /// the pooled connections' sockets: on their own runtimes every statement cost a cross-thread
    /// wake-up, and delivery slowed by a third.
    pub fn start(db: Db, tasks: usize) -> std::io::Result<(Self, Vec<WriterDone>)> {
        let db = db.for_writer();
        let (tx, rx) = mpsc::channel::<Op>(8192);
        let rx = Arc::new(Mutex::new(rx));
        let mut done = Vec::new();
        for i in 0..tasks.max(1) {
            let (done_tx, done_rx) = oneshot::channel();
            let backend = db.backend();
            let run = write_loop(db.clone(), rx.clone());
            let run = async move {
                run.await;
                let _ = done_tx.send(());
            };
            match backend {
                crate::Backend::Sqlite => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    std::thread::Builder::new()
                        .name(format!("courierx-writer-{i}"))
                        .spawn(move || rt.block_on(run))?;
                }
                crate::Backend::Postgres => {
                    tokio::spawn(run);
                }
            }
            done.push(done_rx);
        }
        Ok((Self { tx }, done))
    }

    pub async fn accept(&self, batch: AcceptBatch) -> Result<AcceptOutcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Accept(batch, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<ClaimResult> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Claim(req, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }

    /// Records an attempt's outcome; `Ok(false)` when it was stale (the job's fence moved on:
    /// another claim holds it) and nothing was written.
    pub async fn record(&self, rec: AttemptRecord) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Record(Box::new(rec), reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }
}

async fn write_loop(db: Db, rx: Arc<Mutex<mpsc::Receiver<Op>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { break };
            let mut weight = first.weight();
            batch.push(first);
            while weight < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => {
                        weight += op.weight();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
        }
        write_batch(&db, batch).await;
    }
    // SQLite's writer owns its connection (see `Db::for_writer`); Postgres writers share the pool.
    if db.backend() == crate::Backend::Sqlite {
        db.close().await;
    }
}

async fn write_batch(db: &Db, batch: Vec<Op>) {
    match try_write(db, &batch).await {
        Ok(results) => {
            for (op, res) in batch.into_iter().zip(results) {
                match (op, res) {
                    (Op::Accept(_, reply), BatchResult::Accept(r)) => {
                        let _ = reply.send(Ok(r));
                    }
                    (Op::Record(_, reply), BatchResult::Record(held)) => {
                        let _ = reply.send(Ok(held));
                    }
                    (Op::Claim(_, reply), BatchResult::Claim(c)) => {
                        let _ = reply.send(Ok(c));
                    }
                    (Op::Run(job), BatchResult::Run) => job.answer(),
                    (op, _) => op.fail(StoreError::Corrupt("writer result mismatch".into())),
                }
            }
        }
        Err(e) if batch.len() > 1 => {
            // One bad item must not fail its neighbours: retry each on its own.
            tracing::warn!(error = %e, items = batch.len(), "group commit failed; retrying items one by one");
            for op in batch {
                Box::pin(write_batch(db, vec![op])).await;
            }
        }
        Err(e) => {
            for op in batch {
                op.fail(clone_err(&e));
            }
        }
    }
}

impl Op {
    fn fail(self, e: StoreError) {
        match self {
            Op::Accept(_, reply) => {
                let _ = reply.send(Err(e));
            }
            Op::Record(_, reply) => {
                let _ = reply.send(Err(e));
            }
            Op::Claim(_, reply) => {
                let _ = reply.send(Err(e));
            }
            Op::Run(job) => job.fail(e),
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict(c) => StoreError::Conflict(c),
        StoreError::NotFound => StoreError::NotFound,
        other => StoreError::Corrupt(other.to_string()),
    }
}

enum BatchResult {
    Accept(AcceptOutcome),
    Record(bool),
    Claim(ClaimResult),
    Run,
}

async fn try_write(db: &Db, batch: &[Op]) -> Result<Vec<BatchResult>> {
    let mut tx = db.begin().await?;
    let mut results: Vec<Option<BatchResult>> = (0..batch.len()).map(|_| None).collect();
    // Accepts first, all messages of the batch in a few multi-row statements.
    let mut accepted: Vec<&NewMessage> = Vec::new();
    for (i, op) in batch.iter().enumerate() {
        if let Op::Accept(b, _) = op {
            let claimed = match &b.idempotency {
                Some(k) => claim_key(&mut tx, k, courierx_domain::now_ms()).await?,
                None => true,
            };
            if claimed {
                accepted.extend(b.messages.iter());
            }
            results[i] = Some(BatchResult::Accept(if claimed {
                AcceptOutcome::Accepted
            } else {
                AcceptOutcome::DuplicateKey
            }));
        }
    }
    let mut rest = &accepted[..];
    if let Tx::Postgres(t) = &mut tx
        && rest.len() >= UNNEST_MIN
    {
        insert_accepted_pg(t, rest).await?;
        rest = &[];
    }
    let exact = matches!(tx, Tx::Sqlite(_));
    while !rest.is_empty() {
        // The chunk sizes bound the number of statement texts, so their prepared forms are
        // reused from the connection's statement cache. SQLite's writer connection caches one
        // per group size up to SQLITE_EXACT_MAX (one statement per table for a typical group);
        // Postgres, whose connections are shared, keeps to a few sizes.
        let n = if exact && rest.len() < BULK_SIZES[0] {
            rest.len().min(SQLITE_EXACT_MAX)
        } else {
            BULK_SIZES
                .iter()
                .copied()
                .find(|&s| s <= rest.len())
                .unwrap_or(1)
        };
        let (chunk, tail) = rest.split_at(n);
        insert_accepted(&mut tx, chunk).await?;
        rest = tail;
    }
    for m in accepted.iter().filter(|m| !m.attachments.is_empty()) {
        insert_attachments(&mut tx, m).await?;
    }
    let mut plain_sends = Vec::new();
    for (i, op) in batch.iter().enumerate() {
        if let Op::Record(rec, _) = op {
            if is_plain_send(rec) {
                plain_sends.push((i, &**rec));
            } else {
                results[i] = Some(BatchResult::Record(record_one(&mut tx, rec).await?));
            }
        }
    }
    if !plain_sends.is_empty() {
        let recs: Vec<&AttemptRecord> = plain_sends.iter().map(|(_, r)| *r).collect();
        let held = record_plain_sends(&mut tx, &recs).await?;
        for (i, r) in plain_sends {
            results[i] = Some(BatchResult::Record(held.contains(r.outcome.job_id())));
        }
    }
    for (i, op) in batch.iter().enumerate() {
        if let Op::Claim(req, _) = op {
            results[i] = Some(BatchResult::Claim(crate::jobs::claim(&mut tx, req).await?));
        }
    }
    for (i, op) in batch.iter().enumerate() {
        if let Op::Run(job) = op {
            job.run(&mut tx).await?;
            results[i] = Some(BatchResult::Run);
        }
    }
    // Other processes' workers learn of new jobs at commit (Postgres delivers NOTIFY then).
    if matches!(tx, Tx::Postgres(_)) && !accepted.is_empty() {
        on_tx!(&mut tx, c => sqlx::query("SELECT pg_notify($1, '')").bind(crate::notify::JOBS).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(BatchResult::Record(false)))
        .collect())
}

/// Rows per multi-row INSERT, largest first: 30 columns × 256 rows stays under SQLite's 32,766
/// variables.
const BULK_SIZES: [usize; 7] = [256, 64, 32, 16, 8, 4, 1];

/// SQLite groups up to this size go in with one statement per table.
const SQLITE_EXACT_MAX: usize = 64;

/// From this many messages in one commit, Postgres inserts by `UNNEST` (below); smaller groups
/// use the multi-row VALUES chunks, which execute faster once prepared.
const UNNEST_MIN: usize = 64;

/// Postgres: one statement per table for any number of messages, each column bound as one array
/// and unnested. Multi-row VALUES with thousands of parameters cost tens of milliseconds to
/// prepare on every pooled connection; these three statements are prepared once and tiny.
async fn insert_accepted_pg(
    c: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    msgs: &[&NewMessage],
) -> Result<()> {
    let col =
        |f: &dyn Fn(&MessageRow) -> String| msgs.iter().map(|m| f(&m.row)).collect::<Vec<String>>();
    let opt = |f: &dyn Fn(&MessageRow) -> Option<String>| {
        msgs.iter()
            .map(|m| f(&m.row))
            .collect::<Vec<Option<String>>>()
    };
    let int = |f: &dyn Fn(&MessageRow) -> i64| msgs.iter().map(|m| f(&m.row)).collect::<Vec<i64>>();
    let opt_int = |f: &dyn Fn(&MessageRow) -> Option<i64>| {
        msgs.iter().map(|m| f(&m.row)).collect::<Vec<Option<i64>>>()
    };
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, project_id, channel, status, from_addr, to_addrs, cc_addrs, bcc_addrs, reply_to, \
         subject, html, text_body, headers, tags, metadata, idempotency_key, provider_id, provider_message_id, attempts, \
         last_error, created_at, updated_at, sent_at, attachment_count, send_at, template, category, priority, expires_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
         $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
         $18::text[], $19::text[], $20::bigint[], $21::text[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[], \
         $26::bigint[], $27::text[], $28::text[], $29::text[], $30::bigint[])",
    )
    .bind(col(&|r| r.id.clone()))
    .bind(col(&|r| r.tenant_id.clone()))
    .bind(col(&|r| r.project_id.clone()))
    .bind(col(&|r| r.channel.clone()))
    .bind(col(&|r| r.status.clone()))
    .bind(col(&|r| r.from_addr.clone()))
    .bind(col(&|r| r.to_addrs.clone()))
    .bind(col(&|r| r.cc_addrs.clone()))
    .bind(col(&|r| r.bcc_addrs.clone()))
    .bind(opt(&|r| r.reply_to.clone()))
    .bind(col(&|r| r.subject.clone()))
    .bind(opt(&|r| r.html.clone()))
    .bind(opt(&|r| r.text_body.clone()))
    .bind(col(&|r| r.headers.clone()))
    .bind(col(&|r| r.tags.clone()))
    .bind(col(&|r| r.metadata.clone()))
    .bind(opt(&|r| r.idempotency_key.clone()))
    .bind(opt(&|r| r.provider_id.clone()))
    .bind(opt(&|r| r.provider_message_id.clone()))
    .bind(int(&|r| r.attempts))
    .bind(opt(&|r| r.last_error.clone()))
    .bind(int(&|r| r.created_at))
    .bind(int(&|r| r.updated_at))
    .bind(opt_int(&|r| r.sent_at))
    .bind(int(&|r| r.attachment_count))
    .bind(opt_int(&|r| r.send_at))
    .bind(opt(&|r| r.template.clone()))
    .bind(opt(&|r| r.category.clone()))
    .bind(col(&|r| r.priority.clone()))
    .bind(opt_int(&|r| r.expires_at))
    .execute(&mut **c)
    .await?;
    let event_ids: Vec<String> = msgs.iter().map(|_| crate::users::uuid_v7()).collect();
    sqlx::query(
        "INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail) \
         SELECT e.id, e.tenant_id, e.message_id, e.type, e.at, NULL, NULL, '{}' \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS e(id, tenant_id, message_id, type, at)",
    )
    .bind(event_ids)
    .bind(col(&|r| r.tenant_id.clone()))
    .bind(col(&|r| r.id.clone()))
    .bind(col(&|r| r.status.clone()))
    .bind(int(&|r| r.created_at))
    .execute(&mut **c)
    .await?;
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, message_id, kind, run_at, attempts, max_attempts, lane, priority, expires_at) \
         SELECT j.id, j.tenant_id, j.message_id, 'deliver', j.run_at, 0, j.max_attempts, j.lane, j.priority, j.expires_at \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[], $8::bigint[]) \
         AS j(id, tenant_id, message_id, run_at, max_attempts, lane, priority, expires_at)",
    )
    .bind(msgs.iter().map(|m| m.job_id.clone()).collect::<Vec<String>>())
    .bind(col(&|r| r.tenant_id.clone()))
    .bind(col(&|r| r.id.clone()))
    .bind(msgs.iter().map(|m| m.run_at).collect::<Vec<i64>>())
    .bind(msgs.iter().map(|m| m.max_attempts).collect::<Vec<i64>>())
    .bind(msgs.iter().map(|m| m.lane()).collect::<Vec<String>>())
    .bind(msgs.iter().map(|m| m.priority).collect::<Vec<i64>>())
    .bind(opt_int(&|r| r.expires_at))
    .execute(&mut **c)
    .await?;
    Ok(())
}

/// Inserts messages, their first events and their jobs with one multi-row statement per table
/// (SQLite always; Postgres for groups under [`UNNEST_MIN`]).
async fn insert_accepted(tx: &mut Tx, msgs: &[&NewMessage]) -> Result<()> {
    on_tx!(tx, c => {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO messages (id, tenant_id, project_id, channel, status, from_addr, to_addrs, cc_addrs, bcc_addrs, reply_to, \
             subject, html, text_body, headers, tags, metadata, idempotency_key, provider_id, provider_message_id, attempts, \
             last_error, created_at, updated_at, sent_at, attachment_count, send_at, template, category, priority, expires_at) ");
        q.push_values(msgs, |mut b, m| {
            let r = &m.row;
            b.push_bind(r.id.clone()).push_bind(r.tenant_id.clone()).push_bind(r.project_id.clone()).push_bind(r.channel.clone())
                .push_bind(r.status.clone()).push_bind(r.from_addr.clone()).push_bind(r.to_addrs.clone()).push_bind(r.cc_addrs.clone())
                .push_bind(r.bcc_addrs.clone()).push_bind(r.reply_to.clone()).push_bind(r.subject.clone()).push_bind(r.html.clone())
                .push_bind(r.text_body.clone()).push_bind(r.headers.clone()).push_bind(r.tags.clone()).push_bind(r.metadata.clone())
                .push_bind(r.idempotency_key.clone()).push_bind(r.provider_id.clone()).push_bind(r.provider_message_id.clone())
                .push_bind(r.attempts).push_bind(r.last_error.clone()).push_bind(r.created_at).push_bind(r.updated_at).push_bind(r.sent_at)
                .push_bind(r.attachment_count).push_bind(r.send_at).push_bind(r.template.clone())
                .push_bind(r.category.clone()).push_bind(r.priority.clone()).push_bind(r.expires_at);
        });
        q.build().execute(&mut *c).await?;
        let mut q = sqlx::QueryBuilder::new("INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail) ");
        q.push_values(msgs, |mut b, m| {
            b.push_bind(crate::users::uuid_v7()).push_bind(m.row.tenant_id.clone()).push_bind(m.row.id.clone()).push_bind(m.row.status.clone())
                .push_bind(m.row.created_at).push_bind(None::<String>).push_bind(None::<String>).push_bind("{}");
        });
        q.build().execute(&mut *c).await?;
        let mut q = sqlx::QueryBuilder::new("INSERT INTO jobs (id, tenant_id, message_id, kind, run_at, attempts, max_attempts, lane, priority, expires_at) ");
        q.push_values(msgs, |mut b, m| {
            b.push_bind(m.job_id.clone()).push_bind(m.row.tenant_id.clone()).push_bind(m.row.id.clone()).push_bind("deliver")
                .push_bind(m.run_at).push_bind(0i64).push_bind(m.max_attempts).push_bind(m.lane()).push_bind(m.priority)
                .push_bind(m.row.expires_at);
        });
        q.build().execute(&mut *c).await.map(|_| ())
    })?;
    Ok(())
}

/// Stores each attachment's bytes once per tenant and content, and links them to the message.
async fn insert_attachments(tx: &mut Tx, m: &NewMessage) -> Result<()> {
    for (pos, a) in m.attachments.iter().enumerate() {
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO attachment_blobs (tenant_id, sha256, size, data, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, sha256) DO NOTHING")
            .bind(&m.row.tenant_id).bind(&a.sha256).bind(a.data.len() as i64).bind(&*a.data).bind(m.row.created_at)
            .execute(&mut *c).await.map(|r| r.rows_affected()))?;
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO message_attachments (message_id, position, tenant_id, sha256, filename, content_type, content_id, size)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&m.row.id).bind(pos as i64).bind(&m.row.tenant_id).bind(&a.sha256).bind(&a.filename)
            .bind(&a.content_type).bind(&a.content_id).bind(a.data.len() as i64)
            .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}
