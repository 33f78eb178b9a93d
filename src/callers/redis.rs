//! The shared call state over Redis: repeat-caller contacts and conversation snapshots that
//! every node sees.
//!
//! # Keys
//! Per customer (`{<tenant>/<customer>}` is a Cluster hash tag, so one MULTI touches one slot):
//! - `kg:contacts:{..}`: sorted set of the customer's conversation ids, scored by start time
//!   (ms). `ZADD NX` + `PEXPIRE` in one MULTI is the atomic "count the contact and make it
//!   expire" round trip; unlike `INCR` it is idempotent, so a conversation reconnected to
//!   another node is not counted twice. Entries older than the window are trimmed in the same
//!   MULTI, and the key expires a window after the customer's last contact.
//! - `kg:families:{..}`: hash `<conversation>\x1f<family>` → final segments raising it
//!   (`HINCRBY` + `PEXPIRE` in one MULTI).
//! - `kg:alerted:{..}`: set of `<conversation>\x1f<family>` alerted.
//!
//! Per conversation: `kg:conv:{<tenant>/<conversation>}`, its
//! [`ConversationSnapshot`] as JSON, `SET ... PX <idle timeout>` after each final segment.
//!
//! # Waiting
//! Only [`CallState::prepare`] waits for Redis, once per conversation start and at most one
//! call timeout; if Redis does not answer, the conversation starts from what this node knows.
//! Per segment, counts go to the node's [`CallerHistory`] at once and to Redis behind, through
//! a bounded queue and one writer task; a full queue drops the write (counted in
//! `kasuhara_redis_errors_total{op="state"}`), never the screening.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::callers::{CallState, CallerHistory, Earlier, SharedContact};
use crate::conversation::{ConversationInfo, ConversationSnapshot};
use crate::redis::{KEY_PREFIX, Link, RedisTarget};
use crate::telemetry;

/// Writes queued for the writer task; beyond this they are dropped and counted.
const WRITE_QUEUE: usize = 65_536;
/// Writes sent per round trip.
const WRITE_BATCH: usize = 256;
/// Separates the parts of a hash field or set member (not valid in ids the API accepts).
const SEP: char = '\u{1f}';

/// One write behind.
#[derive(Debug)]
enum Write {
    Family { tenant: String, customer: String, field: String, alerted: bool, window: Duration },
    Snapshot { key: String, json: String, ttl: Duration },
    Forget { key: String },
}

/// The shared call state over Redis; see the module docs.
#[derive(Debug)]
pub struct RedisCallState {
    local: CallerHistory,
    link: Link,
    writes: mpsc::Sender<Write>,
    /// Remembered per (tenant, customer): the window their keys expire after.
    windows: std::sync::Mutex<HashMap<(String, String), Duration>>,
}

impl RedisCallState {
    /// The call state over `target`; its writer runs on `tasks` until `shutdown`.
    pub fn start(target: &RedisTarget, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        tasks.spawn(write_behind(target.link(), queue, shutdown));
        Self {
            local: CallerHistory::default(),
            link: target.link(),
            writes,
            windows: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn send(&self, write: Write) {
        if self.writes.try_send(write).is_err() {
            telemetry::redis_error("state", &"write queue full: a shared count was dropped");
        }
    }

    fn window(&self, tenant_id: &str, customer_id: &str) -> Duration {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // Unknown only if prepare never ran for the customer; a day is the policy default.
        windows
            .get(&(tenant_id.to_owned(), customer_id.to_owned()))
            .copied()
            .unwrap_or(Duration::from_secs(86_400))
    }

    async fn fetch(
        &self,
        info: &ConversationInfo,
        window: Duration,
    ) -> Result<Option<ConversationSnapshot>, crate::redis::RedisCallError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let has_customer = !info.customer_id.is_empty();
        if has_customer {
            let tag = tag(&info.tenant_id, &info.customer_id);
            let contacts = format!("{KEY_PREFIX}:contacts:{tag}");
            let started = millis(info.started_at);
            let window_ms = window.as_millis() as u64;
            pipe.cmd("ZADD").arg(&contacts).arg("NX").arg(started).arg(&info.conversation_id);
            pipe.ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&contacts)
                .arg("-inf")
                .arg(format!("({}", started.saturating_sub(window_ms)))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&contacts).arg(window_ms).ignore();
            pipe.cmd("ZRANGE").arg(&contacts).arg(0).arg(-1).arg("WITHSCORES");
            pipe.cmd("HGETALL").arg(format!("{KEY_PREFIX}:families:{tag}"));
            pipe.cmd("SMEMBERS").arg(format!("{KEY_PREFIX}:alerted:{tag}"));
        }
        let conv_key = conversation_key(&info.tenant_id, &info.conversation_id);
        let mut get = redis::cmd("GET");
        get.arg(&conv_key);
        let (replies, snapshot): (Vec<Value>, Value) = if has_customer {
            // The snapshot lives in another slot: a second command in the same round trip is
            // not possible inside the MULTI, so it follows it.
            let replies: Vec<Value> = self.link.call(&pipe, Duration::ZERO).await?;
            (replies, self.link.call(&get, Duration::ZERO).await?)
        } else {
            (Vec::new(), self.link.call(&get, Duration::ZERO).await?)
        };
        if has_customer {
            self.windows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((info.tenant_id.clone(), info.customer_id.clone()), window);
            let mut replies = replies.into_iter();
            let (contacts, families, alerted) = (replies.next(), replies.next(), replies.next());
            let shared = contacts_from(contacts, families, alerted);
            self.local.seed(&info.tenant_id, &info.customer_id, shared);
        }
        Ok(match snapshot {
            Value::BulkString(json) => serde_json::from_slice(&json).ok(),
            _ => None,
        })
    }
}

impl CallState for RedisCallState {
    fn prepare<'a>(
        &'a self,
        info: &'a ConversationInfo,
        window: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<ConversationSnapshot>> + Send + 'a>> {
        Box::pin(async move {
            match self.fetch(info, window).await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    telemetry::redis_error("state", &error);
                    None
                }
            }
        })
    }

    fn open(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        started_at: SystemTime,
        window: Duration,
    ) -> u32 {
        // `prepare` registered the contact in Redis and seeded the local copy with it.
        self.local.open(tenant_id, customer_id, conversation_id, started_at, window)
    }

    fn record(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        family: &str,
        alerted: bool,
    ) -> Earlier {
        let earlier = self.local.record(tenant_id, customer_id, conversation_id, family, alerted);
        self.send(Write::Family {
            tenant: tenant_id.to_owned(),
            customer: customer_id.to_owned(),
            field: format!("{conversation_id}{SEP}{family}"),
            alerted,
            window: self.window(tenant_id, customer_id),
        });
        earlier
    }

    fn keeps_snapshots(&self) -> bool {
        true
    }

    fn save_snapshot(&self, snapshot: &ConversationSnapshot, ttl: Duration) {
        match serde_json::to_string(snapshot) {
            Ok(json) => self.send(Write::Snapshot {
                key: conversation_key(&snapshot.tenant_id, &snapshot.conversation_id),
                json,
                ttl,
            }),
            Err(error) => telemetry::redis_error("state", &error),
        }
    }

    fn drop_snapshot(&self, tenant_id: &str, conversation_id: &str) {
        self.send(Write::Forget { key: conversation_key(tenant_id, conversation_id) });
    }
}

/// Sends the queued writes in batches; a failed batch is logged and counted, not retried:
/// counts are hints for the next contact, and the next snapshot supersedes this one.
async fn write_behind(link: Link, mut queue: mpsc::Receiver<Write>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        let received = tokio::select! {
            n = queue.recv_many(&mut batch, WRITE_BATCH) => n,
            () = shutdown.cancelled() => {
                queue.close();
                queue.recv_many(&mut batch, WRITE_BATCH).await
            }
        };
        if received == 0 {
            return; // closed and drained
        }
        let mut pipe = redis::pipe();
        for write in batch.drain(..) {
            match write {
                Write::Family { tenant, customer, field, alerted, window } => {
                    let tag = tag(&tenant, &customer);
                    let window_ms = window.as_millis() as u64;
                    let families = format!("{KEY_PREFIX}:families:{tag}");
                    pipe.cmd("MULTI").ignore();
                    pipe.cmd("HINCRBY").arg(&families).arg(&field).arg(1).ignore();
                    pipe.cmd("PEXPIRE").arg(&families).arg(window_ms).ignore();
                    if alerted {
                        let set = format!("{KEY_PREFIX}:alerted:{tag}");
                        pipe.cmd("SADD").arg(&set).arg(&field).ignore();
                        pipe.cmd("PEXPIRE").arg(&set).arg(window_ms).ignore();
                    }
                    pipe.cmd("EXEC").ignore();
                }
                Write::Snapshot { key, json, ttl } => {
                    let ttl_ms = (ttl.as_millis() as u64).max(1);
                    pipe.cmd("SET").arg(key).arg(json).arg("PX").arg(ttl_ms).ignore();
                }
                Write::Forget { key } => {
                    pipe.cmd("DEL").arg(key).ignore();
                }
            }
        }
        if let Err(error) = link.call::<()>(&pipe, Duration::ZERO).await {
            telemetry::redis_error("state", &error);
        }
        if shutdown.is_cancelled() && queue.is_empty() {
            return;
        }
    }
}

/// The hash tag of a (tenant, id) pair.
fn tag(tenant_id: &str, id: &str) -> String {
    format!("{{{tenant_id}/{id}}}")
}

fn conversation_key(tenant_id: &str, conversation_id: &str) -> String {
    format!("{KEY_PREFIX}:conv:{}", tag(tenant_id, conversation_id))
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn items(value: Option<Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items) | Value::Set(items)) => items,
        Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The customer's contacts from the replies to `ZRANGE .. WITHSCORES`, `HGETALL` and
/// `SMEMBERS`, oldest first.
fn contacts_from(
    contacts: Option<Value>,
    families: Option<Value>,
    alerted: Option<Value>,
) -> Vec<SharedContact> {
    let mut out: Vec<SharedContact> = Vec::new();
    let mut pairs = items(contacts).into_iter();
    while let (Some(member), Some(score)) = (pairs.next(), pairs.next()) {
        let Some(conversation_id) = text(member) else { continue };
        let started_ms = match score {
            Value::Double(d) => d as u64,
            other => text(other).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) as u64,
        };
        out.push(SharedContact {
            conversation_id,
            started_at: Some(UNIX_EPOCH + Duration::from_millis(started_ms)),
            ..SharedContact::default()
        });
    }
    let mut fields = items(families).into_iter();
    while let (Some(field), Some(count)) = (fields.next(), fields.next()) {
        let (Some(field), Some(count)) = (text(field), text(count)) else { continue };
        let Some((conversation, family)) = field.split_once(SEP) else { continue };
        if let Some(contact) = out.iter_mut().find(|c| c.conversation_id == conversation) {
            contact.family_counts.insert(family.to_owned(), count.parse().unwrap_or(0));
        }
    }
    for member in items(alerted) {
        let Some(member) = text(member) else { continue };
        let Some((conversation, family)) = member.split_once(SEP) else { continue };
        if let Some(contact) = out.iter_mut().find(|c| c.conversation_id == conversation) {
            contact.alerted.insert(family.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis replies become contacts, oldest first, with their counts and alerted families;
    /// fields of contacts no longer in the window are ignored.
    #[test]
    fn contacts_from_replies() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let contacts = Value::Array(vec![bulk("a"), bulk("1000"), bulk("b"), bulk("2000")]);
        let families = Value::Array(vec![
            bulk("a\u{1f}refund"),
            bulk("2"),
            bulk("gone\u{1f}refund"),
            bulk("9"),
        ]);
        let alerted = Value::Array(vec![bulk("a\u{1f}refund")]);
        let got = contacts_from(Some(contacts), Some(families), Some(alerted));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].conversation_id, "a");
        assert_eq!(got[0].family_counts.get("refund"), Some(&2));
        assert!(got[0].alerted.contains("refund"));
        assert_eq!(got[1].started_at, Some(UNIX_EPOCH + Duration::from_millis(2000)));
        assert!(got[1].family_counts.is_empty());
    }
}
