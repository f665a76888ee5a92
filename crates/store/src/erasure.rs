//! Erasing one recipient's data from a project: the messages stay (status, timeline, counts), but
//! their content goes and the address is replaced by its hash wherever it was stored.

use crate::housekeeping::{delete_where_in, release_blobs, unlink_attachments};
use crate::messages::{NewEvent, insert_event};
use crate::{Db, Result, Tx, on_tx};
use courierx_domain::{Mailbox, Millis, ProjectId, TenantId};

/// Messages examined per transaction.
const PAGE: i64 = 200;

pub struct Erasure<'a> {
    pub tenant: TenantId,
    pub project: ProjectId,
    /// The address, lowercase.
    pub address: &'a str,
    /// What replaces it (`sha256:<hex>`).
    pub hash: &'a str,
    pub now: Millis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    pub messages: u64,
    /// Messages a worker is sending right now, left untouched (erase again once they finish).
    pub in_flight: u64,
}

#[derive(sqlx::FromRow)]
struct Candidate {
    id: String,
    status: String,
    to_addrs: String,
    cc_addrs: String,
    bcc_addrs: String,
    reply_to: Option<String>,
    last_error: Option<String>,
}

impl Db {
    pub async fn erase_recipient(&self, e: &Erasure<'_>) -> Result<Erased> {
        let pattern = format!(
            "%{}%",
            e.address
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut out = Erased::default();
        let mut after = String::new();
        loop {
            let mut tx = self.begin().await?;
            // The LIKE only narrows the page down; `mentions` decides on the parsed addresses.
            let page = on_tx!(&mut tx, c => sqlx::query_as::<_, Candidate>(
                "SELECT id, status, to_addrs, cc_addrs, bcc_addrs, reply_to, last_error FROM messages
                 WHERE tenant_id = $1 AND project_id = $2 AND id > $3
                   AND (lower(to_addrs) LIKE $4 ESCAPE '\\' OR lower(cc_addrs) LIKE $4 ESCAPE '\\'
                        OR lower(bcc_addrs) LIKE $4 ESCAPE '\\' OR lower(COALESCE(reply_to, '')) LIKE $4 ESCAPE '\\')
                 ORDER BY id LIMIT $5")
                .bind(e.tenant.to_string()).bind(e.project.to_string()).bind(&after).bind(&pattern).bind(PAGE)
                .fetch_all(&mut *c).await)?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.id.clone();
            let full = page.len() as i64 == PAGE;
            for m in &page {
                if !mentions(m, e.address) {
                    continue;
                }
                if erase_message(&mut tx, m, e).await? {
                    out.messages += 1;
                } else {
                    out.in_flight += 1;
                }
            }
            tx.commit().await?;
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

fn mentions(m: &Candidate, address: &str) -> bool {
    [&m.to_addrs, &m.cc_addrs, &m.bcc_addrs]
        .into_iter()
        .flat_map(|l| serde_json::from_str::<Vec<String>>(l).unwrap_or_default())
        .chain(m.reply_to.clone())
        .any(|entry| is_address(&entry, address))
}

fn is_address(entry: &str, address: &str) -> bool {
    Mailbox::parse(entry).is_ok_and(|mb| mb.address.as_str().to_lowercase() == address)
}

/// The list with the address's entries replaced by the hash.
fn rewrite_list(list: &str, e: &Erasure<'_>) -> String {
    let entries: Vec<String> = serde_json::from_str::<Vec<String>>(list)
        .unwrap_or_default()
        .into_iter()
        .map(|entry| {
            if is_address(&entry, e.address) {
                e.hash.to_string()
            } else {
                entry
            }
        })
        .collect();
    crate::to_json(&entries)
}

/// `text` with every ASCII-case-insensitive occurrence of `needle` replaced, if it has one.
fn scrub(text: &str, needle: &str, with: &str) -> Option<String> {
    let (hay, pat) = (text.as_bytes(), needle.as_bytes());
    if pat.is_empty() || hay.len() < pat.len() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied, mut found) = (0, 0, false);
    while i + pat.len() <= hay.len() {
        if text.is_char_boundary(i) && hay[i..i + pat.len()].eq_ignore_ascii_case(pat) {
            out.push_str(&text[copied..i]);
            out.push_str(with);
            i += pat.len();
            copied = i;
            found = true;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    found.then_some(out)
}

/// Erases one message inside the page's transaction; false when a worker holds its job.
async fn erase_message(tx: &mut Tx, m: &Candidate, e: &Erasure<'_>) -> Result<bool> {
    let leased: i64 = on_tx!(tx, c => sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE message_id = $1 AND lease_until IS NOT NULL AND lease_until >= $2")
        .bind(&m.id).bind(e.now).fetch_one(&mut *c).await)?;
    if leased > 0 {
        return Ok(false);
    }
    // Content that is gone cannot be sent: a message still waiting is cancelled (a `sending` one
    // here is a dead worker's, whose lease expired).
    let jobs = on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE message_id = $1")
        .bind(&m.id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    let cancel = jobs > 0 || matches!(m.status.as_str(), "scheduled" | "queued" | "sending");
    let status = if cancel {
        "cancelled"
    } else {
        m.status.as_str()
    };
    let last_error = m
        .last_error
        .as_deref()
        .map(|t| scrub(t, e.address, e.hash).unwrap_or_else(|| t.to_string()));
    on_tx!(tx, c => sqlx::query(
        "UPDATE messages SET subject = '', html = NULL, text_body = NULL, headers = '{}', metadata = '{}',
                attachment_count = 0, to_addrs = $1, cc_addrs = $2, bcc_addrs = $3, reply_to = $4,
                last_error = $5, status = $6, updated_at = CASE WHEN $7 THEN $8 ELSE updated_at END
         WHERE id = $9")
        .bind(rewrite_list(&m.to_addrs, e)).bind(rewrite_list(&m.cc_addrs, e)).bind(rewrite_list(&m.bcc_addrs, e))
        .bind(m.reply_to.as_deref().map(|r| if is_address(r, e.address) { e.hash.to_string() } else { r.to_string() }))
        .bind(last_error).bind(status).bind(cancel).bind(e.now).bind(&m.id)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    if cancel {
        insert_event(
            tx,
            &NewEvent {
                tenant_id: e.tenant.to_string(),
                message_id: m.id.clone(),
                kind: courierx_domain::EventType::Cancelled.as_str(),
                at: e.now,
                provider_id: None,
                recipient: None,
                detail: serde_json::json!({"reason": "recipient erased"}),
            },
        )
        .await?;
    }
    let ids = [m.id.clone()];
    delete_where_in(tx, "sandbox_messages", "message_id", &ids).await?;
    let links = unlink_attachments(tx, &ids).await?;
    release_blobs(tx, links).await?;
    scrub_rows(tx, "message_events", "id", "recipient", &m.id, e).await?;
    scrub_rows(tx, "provider_events", "id", "recipient", &m.id, e).await?;
    scrub_rows(tx, "message_recipients", "email", "email", &m.id, e).await?;
    Ok(true)
}

/// Replaces the address in a message's rows of `table`: the `recipient_col` when it is the
/// address, and any mention in `detail` (bounce diagnostics quote it).
async fn scrub_rows(
    tx: &mut Tx,
    table: &'static str,
    key_col: &'static str,
    recipient_col: &'static str,
    message_id: &str,
    e: &Erasure<'_>,
) -> Result<()> {
    let rows: Vec<(String, Option<String>, String)> = on_tx!(tx, c => sqlx::query_as(
        sqlx::AssertSqlSafe(format!("SELECT {key_col}, {recipient_col}, detail FROM {table} WHERE message_id = $1")))
        .bind(message_id).fetch_all(&mut *c).await)?;
    for (key, recipient, detail) in rows {
        let recipient_hit = recipient
            .as_deref()
            .is_some_and(|r| r.to_lowercase() == e.address);
        let new_detail = scrub(&detail, e.address, e.hash);
        if !recipient_hit && new_detail.is_none() {
            continue;
        }
        let sql = format!(
            "UPDATE {table} SET {recipient_col} = CASE WHEN $1 THEN $2 ELSE {recipient_col} END, detail = $3
             WHERE message_id = $4 AND {key_col} = $5"
        );
        on_tx!(tx, c => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(recipient_hit).bind(e.hash).bind(new_detail.unwrap_or(detail)).bind(message_id).bind(&key)
            .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn scrub_replaces_every_case_insensitive_mention() {
        assert_eq!(
            scrub(
                "550 <Bob@Example.test>: no; bob@example.test",
                "bob@example.test",
                "H"
            )
            .as_deref(),
            Some("550 <H>: no; H")
        );
        assert_eq!(scrub("nothing here", "bob@example.test", "H"), None);
        assert_eq!(scrub("é bob@x é", "bob@x", "H").as_deref(), Some("é H é"));
    }
}
