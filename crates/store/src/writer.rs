//! Group commit. Hot-path writes (accepting messages, recording delivery outcomes) go through a
//! writer task that drains whatever is waiting, writes it in one transaction and commits once, then
//! answers every caller. Durability holds (nobody is answered before the commit), while one fsync
//! serves many requests: this disk manages ~550 commits/s, so per-request commits would cap
//! throughput there.

use crate::idempotency::{NewIdempotency, claim_key};
use crate::jobs::ClaimedJob;
use crate::messages::{MessageRow, NewEvent, insert_event};
use crate::sandbox::SandboxRow;
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
    pub attachments: Vec<NewAttachment>,
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

/// What happened to one delivery attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Sent {
        job_id: String,
        provider_message_id: Option<String>,
        sandbox: Option<SandboxRow>,
    },
    Retry {
        job_id: String,
        run_at: Millis,
        error: String,
    },
    Failed {
        job_id: String,
        error: String,
    },
    /// Not tried (the provider's pacing has no slot soon): back on the queue for `run_at`,
    /// without counting as an attempt.
    Defer {
        job_id: String,
        run_at: Millis,
    },
    /// Every recipient is on the suppression list: nothing was sent, no provider was called.
    Suppressed {
        job_id: String,
    },
}

/// A recipient left out of a send because it is suppressed.
#[derive(Debug, Clone)]
pub struct SuppressedRecipient {
    pub email: String,
    pub reason: String,
    /// '' when suppressed for all mail, else the category.
    pub scope: String,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub tenant_id: String,
    pub message_id: String,
    /// The provider of the try that decided the outcome.
    pub provider_id: Option<String>,
    pub attempt: i64,
    pub at: Millis,
    pub latency_ms: i64,
    /// Earlier tries of this attempt that failed over to the next provider.
    pub failovers: Vec<ProviderTry>,
    /// Recipients dropped by the suppression list (recorded once the outcome is final).
    pub suppressed: Vec<SuppressedRecipient>,
    pub outcome: Outcome,
}

/// One provider tried within an attempt that did not decide it (recorded as a `provider_try` event).
#[derive(Debug, Clone)]
pub struct ProviderTry {
    pub provider_id: String,
    /// `transient`, `provider_down`, `circuit_open` or `unusable`.
    pub outcome: &'static str,
    pub latency_ms: i64,
    pub error: String,
}

/// A worker asking for due jobs; answered inside the same transaction as other writes, so a
/// claim shares its commit with the outcomes recorded just before it.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub worker: String,
    pub now: Millis,
    pub lease_ms: i64,
    pub limit: i64,
}

/// A claimed job with the message it delivers.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: ClaimedJob,
    pub message: MessageRow,
}

enum Op {
    Accept(AcceptBatch, oneshot::Sender<Result<AcceptOutcome>>),
    Record(Box<AttemptRecord>, oneshot::Sender<Result<()>>),
    Claim(ClaimRequest, oneshot::Sender<Result<Vec<Claimed>>>),
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

    pub async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Claim(req, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }

    pub async fn record(&self, rec: AttemptRecord) -> Result<()> {
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
                    (Op::Record(_, reply), BatchResult::Record) => {
                        let _ = reply.send(Ok(()));
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
    Record,
    Claim(Vec<Claimed>),
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
                plain_sends.push(&**rec);
            } else {
                record_one(&mut tx, rec).await?;
            }
            results[i] = Some(BatchResult::Record);
        }
    }
    if !plain_sends.is_empty() {
        record_plain_sends(&mut tx, &plain_sends).await?;
    }
    for (i, op) in batch.iter().enumerate() {
        if let Op::Claim(req, _) = op {
            results[i] = Some(BatchResult::Claim(claim(&mut tx, req).await?));
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
        .map(|r| r.unwrap_or(BatchResult::Record))
        .collect())
}

/// Rows per multi-row INSERT, largest first: 27 columns × 256 rows stays under SQLite's 32,766
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
         last_error, created_at, updated_at, sent_at, attachment_count, send_at, template, category) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
         $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
         $18::text[], $19::text[], $20::bigint[], $21::text[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[], \
         $26::bigint[], $27::text[], $28::text[])",
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
        "INSERT INTO jobs (id, tenant_id, message_id, kind, run_at, attempts, max_attempts) \
         SELECT j.id, j.tenant_id, j.message_id, 'deliver', j.run_at, 0, j.max_attempts \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS j(id, tenant_id, message_id, run_at, max_attempts)",
    )
    .bind(msgs.iter().map(|m| m.job_id.clone()).collect::<Vec<String>>())
    .bind(col(&|r| r.tenant_id.clone()))
    .bind(col(&|r| r.id.clone()))
    .bind(msgs.iter().map(|m| m.run_at).collect::<Vec<i64>>())
    .bind(msgs.iter().map(|m| m.max_attempts).collect::<Vec<i64>>())
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
             last_error, created_at, updated_at, sent_at, attachment_count, send_at, template, category) ");
        q.push_values(msgs, |mut b, m| {
            let r = &m.row;
            b.push_bind(r.id.clone()).push_bind(r.tenant_id.clone()).push_bind(r.project_id.clone()).push_bind(r.channel.clone())
                .push_bind(r.status.clone()).push_bind(r.from_addr.clone()).push_bind(r.to_addrs.clone()).push_bind(r.cc_addrs.clone())
                .push_bind(r.bcc_addrs.clone()).push_bind(r.reply_to.clone()).push_bind(r.subject.clone()).push_bind(r.html.clone())
                .push_bind(r.text_body.clone()).push_bind(r.headers.clone()).push_bind(r.tags.clone()).push_bind(r.metadata.clone())
                .push_bind(r.idempotency_key.clone()).push_bind(r.provider_id.clone()).push_bind(r.provider_message_id.clone())
                .push_bind(r.attempts).push_bind(r.last_error.clone()).push_bind(r.created_at).push_bind(r.updated_at).push_bind(r.sent_at)
                .push_bind(r.attachment_count).push_bind(r.send_at).push_bind(r.template.clone())
                .push_bind(r.category.clone());
        });
        q.build().execute(&mut *c).await?;
        let mut q = sqlx::QueryBuilder::new("INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail) ");
        q.push_values(msgs, |mut b, m| {
            b.push_bind(crate::users::uuid_v7()).push_bind(m.row.tenant_id.clone()).push_bind(m.row.id.clone()).push_bind(m.row.status.clone())
                .push_bind(m.row.created_at).push_bind(None::<String>).push_bind(None::<String>).push_bind("{}");
        });
        q.build().execute(&mut *c).await?;
        let mut q = sqlx::QueryBuilder::new("INSERT INTO jobs (id, tenant_id, message_id, kind, run_at, attempts, max_attempts) ");
        q.push_values(msgs, |mut b, m| {
            b.push_bind(m.job_id.clone()).push_bind(m.row.tenant_id.clone()).push_bind(m.row.id.clone()).push_bind("deliver")
                .push_bind(m.run_at).push_bind(0i64).push_bind(m.max_attempts);
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

const CLAIM_SQLITE: &str = "UPDATE jobs SET lease_until = $1, locked_by = $2, attempts = attempts + 1
    WHERE id IN (SELECT id FROM jobs WHERE run_at <= $3 AND (lease_until IS NULL OR lease_until < $3) ORDER BY run_at LIMIT $4)
    RETURNING id, tenant_id, message_id, attempts, max_attempts";

const CLAIM_POSTGRES: &str = "UPDATE jobs SET lease_until = $1, locked_by = $2, attempts = attempts + 1
    WHERE id IN (SELECT id FROM jobs WHERE run_at <= $3 AND (lease_until IS NULL OR lease_until < $3) ORDER BY run_at LIMIT $4
                 FOR UPDATE SKIP LOCKED)
    RETURNING id, tenant_id, message_id, attempts, max_attempts";

/// Claims due jobs (Postgres: `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on each
/// other; SQLite has one writer, so the conditional UPDATE suffices), marks their messages
/// `sending` and loads them — three statements however many jobs.
async fn claim(tx: &mut Tx, r: &ClaimRequest) -> Result<Vec<Claimed>> {
    let lease = r.now + r.lease_ms;
    let sql = match tx {
        Tx::Sqlite(_) => CLAIM_SQLITE,
        Tx::Postgres(_) => CLAIM_POSTGRES,
    };
    let jobs: Vec<ClaimedJob> = on_tx!(tx, c => sqlx::query_as(sql).bind(lease).bind(&r.worker).bind(r.now).bind(r.limit).fetch_all(&mut *c).await)?;
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    // The claimed ids as one parameter: a JSON array for SQLite (`json_each`), an array for Postgres.
    let ids: Vec<String> = jobs.iter().map(|j| j.message_id.clone()).collect();
    let in_ids = match tx {
        Tx::Sqlite(_) => "(SELECT value FROM json_each($1))",
        Tx::Postgres(_) => "(SELECT unnest($1::text[]))",
    };
    let update = format!(
        "UPDATE messages SET status = 'sending', updated_at = $2 WHERE id IN {in_ids} AND status IN ('scheduled', 'queued', 'sending')"
    );
    let select = format!(
        "SELECT {} FROM messages WHERE id IN {in_ids}",
        crate::messages::MESSAGE_COLS
    );
    let rows: Vec<MessageRow> = match tx {
        Tx::Sqlite(t) => {
            let json = crate::to_json(&ids);
            sqlx::query(sqlx::AssertSqlSafe(update))
                .bind(&json)
                .bind(r.now)
                .execute(&mut **t)
                .await?;
            sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(&json)
                .fetch_all(&mut **t)
                .await?
        }
        Tx::Postgres(t) => {
            sqlx::query(sqlx::AssertSqlSafe(update))
                .bind(&ids)
                .bind(r.now)
                .execute(&mut **t)
                .await?;
            sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(&ids)
                .fetch_all(&mut **t)
                .await?
        }
    };
    let mut by_id: std::collections::HashMap<String, MessageRow> =
        rows.into_iter().map(|m| (m.id.clone(), m)).collect();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        match by_id.remove(&job.message_id) {
            Some(message) => out.push(Claimed { job, message }),
            None => {
                // A job whose message is gone can never be delivered.
                on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(&job.id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            }
        }
    }
    Ok(out)
}

/// A successful send with nothing else to record (no failover tries, no suppressed
/// recipients, no sandbox copy): most outcomes of a delivery run.
fn is_plain_send(r: &AttemptRecord) -> bool {
    matches!(r.outcome, Outcome::Sent { sandbox: None, .. })
        && r.failovers.is_empty()
        && r.suppressed.is_empty()
}

/// The `sent` event's detail, however the send is recorded.
fn sent_detail(r: &AttemptRecord, provider_message_id: &Option<String>) -> serde_json::Value {
    serde_json::json!({"attempt": r.attempt, "latency_ms": r.latency_ms, "provider_message_id": provider_message_id})
}

/// Records plain sends (see [`is_plain_send`]) exactly as [`record_one`] would, with three
/// statements however many there are instead of three per send (each a hand-off to SQLite's
/// worker thread or a round trip to Postgres). The rows travel as one JSON array parameter.
async fn record_plain_sends(tx: &mut Tx, recs: &[&AttemptRecord]) -> Result<()> {
    let rows: Vec<serde_json::Value> = recs
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Sent {
                job_id,
                provider_message_id,
                ..
            } => Some(serde_json::json!({
                "id": r.message_id,
                "tenant_id": r.tenant_id,
                "job_id": job_id,
                "provider_id": r.provider_id,
                "pmid": provider_message_id,
                "attempt": r.attempt,
                "at": r.at,
                "event_id": crate::users::uuid_v7(),
                "detail": crate::to_json(&sent_detail(r, provider_message_id)),
            })),
            _ => None,
        })
        .collect();
    let json = crate::to_json(&rows);
    let (update, delete, insert) = match tx {
        Tx::Sqlite(_) => (
            "UPDATE messages SET status = 'sent', provider_id = v.provider_id, provider_message_id = v.pmid,
                 attempts = v.attempt, sent_at = v.at, updated_at = v.at, last_error = NULL
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.provider_id' AS provider_id, value ->> '$.pmid' AS pmid,
                          value ->> '$.attempt' AS attempt, value ->> '$.at' AS at FROM json_each($1)) AS v
             WHERE messages.id = v.id AND messages.status IN ('queued', 'sending')",
            "DELETE FROM jobs WHERE id IN (SELECT value ->> '$.job_id' FROM json_each($1))",
            "INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail)
             SELECT value ->> '$.event_id', value ->> '$.tenant_id', value ->> '$.id', 'sent', value ->> '$.at',
                    value ->> '$.provider_id', NULL, value ->> '$.detail' FROM json_each($1)",
        ),
        Tx::Postgres(_) => (
            "UPDATE messages AS m SET status = 'sent', provider_id = v.provider_id, provider_message_id = v.pmid,
                 attempts = v.attempt, sent_at = v.at, updated_at = v.at, last_error = NULL
             FROM jsonb_to_recordset($1::jsonb) AS v(id text, provider_id text, pmid text, attempt bigint, at bigint)
             WHERE m.id = v.id AND m.status IN ('queued', 'sending')",
            "DELETE FROM jobs WHERE id IN (SELECT v.job_id FROM jsonb_to_recordset($1::jsonb) AS v(job_id text))",
            "INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail)
             SELECT v.event_id, v.tenant_id, v.id, 'sent', v.at, v.provider_id, NULL, v.detail
             FROM jsonb_to_recordset($1::jsonb) AS v(event_id text, tenant_id text, id text, at bigint, provider_id text, detail text)",
        ),
    };
    for sql in [update, delete, insert] {
        on_tx!(tx, c => sqlx::query(sql).bind(&json).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}

async fn record_one(tx: &mut Tx, r: &AttemptRecord) -> Result<()> {
    let event = |kind: &'static str, detail: serde_json::Value| NewEvent {
        tenant_id: r.tenant_id.clone(),
        message_id: r.message_id.clone(),
        kind,
        at: r.at,
        provider_id: r.provider_id.clone(),
        recipient: None,
        detail,
    };
    for t in &r.failovers {
        insert_event(
            tx,
            &NewEvent {
                provider_id: Some(t.provider_id.clone()),
                ..event(
                    courierx_domain::EventType::ProviderTry.as_str(),
                    serde_json::json!({"attempt": r.attempt, "outcome": t.outcome, "latency_ms": t.latency_ms, "error": t.error}),
                )
            },
        )
        .await?;
    }
    if matches!(
        r.outcome,
        Outcome::Sent { .. } | Outcome::Failed { .. } | Outcome::Suppressed { .. }
    ) {
        for d in &r.suppressed {
            let detail = serde_json::json!({"reason": d.reason, "scope": d.scope});
            insert_event(
                tx,
                &NewEvent {
                    recipient: Some(d.email.clone()),
                    provider_id: None,
                    ..event(
                        courierx_domain::EventType::Suppressed.as_str(),
                        detail.clone(),
                    )
                },
            )
            .await?;
            crate::provider_events::set_recipient_status(
                tx,
                &r.tenant_id,
                &r.message_id,
                &d.email,
                "suppressed",
                &detail,
                r.at,
            )
            .await?;
        }
    }
    match &r.outcome {
        Outcome::Suppressed { job_id } => {
            on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'suppressed', attempts = $1, updated_at = $2
                 WHERE id = $3 AND status IN ('queued', 'sending')")
                .bind(r.attempt).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Outcome::Sent {
            job_id,
            provider_message_id,
            sandbox,
        } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'sent', provider_id = $1, provider_message_id = $2, attempts = $3, sent_at = $4,
                    updated_at = $4, last_error = NULL WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(provider_message_id).bind(r.attempt).bind(r.at).bind(&r.message_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(tx, &event("sent", sent_detail(r, provider_message_id))).await?;
            if let Some(s) = sandbox {
                crate::sandbox::insert(tx, s).await?;
            }
        }
        Outcome::Retry {
            job_id,
            run_at,
            error,
        } => {
            on_tx!(tx, c => sqlx::query("UPDATE jobs SET run_at = $1, lease_until = NULL, locked_by = NULL WHERE id = $2")
                .bind(run_at).bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'queued', provider_id = $1, attempts = $2, last_error = $3, updated_at = $4
                 WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(r.attempt).bind(error).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(
                tx,
                &event(
                    "attempt_failed",
                    serde_json::json!({"attempt": r.attempt, "error": error, "latency_ms": r.latency_ms, "next_retry_at": run_at}),
                ),
            )
            .await?;
        }
        Outcome::Defer { job_id, run_at } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE jobs SET run_at = $1, lease_until = NULL, locked_by = NULL, attempts = attempts - 1 WHERE id = $2")
                .bind(run_at).bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'queued', updated_at = $1 WHERE id = $2 AND status = 'sending'")
                .bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Outcome::Failed { job_id, error } => {
            on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'failed', provider_id = $1, attempts = $2, last_error = $3, updated_at = $4
                 WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(r.attempt).bind(error).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(tx, &event("failed", serde_json::json!({"attempt": r.attempt, "error": error, "latency_ms": r.latency_ms})))
                .await?;
        }
    }
    Ok(())
}
