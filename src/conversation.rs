//! Per-conversation state behind a `Screen` stream: who the conversation belongs to, which
//! segment came last, and turning a segment's detections into alerts.
//!
//! The state is owned by the stream's task (one conversation, one task), so it needs no lock.
//! Only final customer text is screened: an interim ASR hypothesis is revised a moment later
//! and would raise alerts on words never said (らいげつからばか → 来月からバカンス).

use std::sync::Arc;
use std::time::SystemTime;

use crate::alert::{Alert, AlertIds};
use crate::error::ScreenError;
use crate::pipeline::Pipeline;

/// The longest text accepted in one segment, in bytes. A turn of ASR is a few hundred bytes;
/// anything this long is a client bug, and refusing it bounds the work per segment.
pub const MAX_TEXT_BYTES: usize = 4096;
/// The longest id (conversation, tenant, customer, queue, agent) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Who spoke a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The customer: screened.
    Customer,
    /// The agent: never alerts.
    Agent,
}

/// Where a conversation comes from, from its `ConversationStart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// The platform's conversation id.
    pub conversation_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The customer, for linking repeated contacts.
    pub customer_id: String,
    /// The queue.
    pub queue: String,
    /// The agent.
    pub agent_id: String,
}

impl ConversationInfo {
    /// Checks the ids: conversation and tenant required, all within [`MAX_ID_BYTES`].
    ///
    /// # Errors
    /// [`ScreenError::InvalidArgument`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ScreenError> {
        require_id("start.conversation_id", &self.conversation_id, true)?;
        require_id("start.tenant_id", &self.tenant_id, true)?;
        require_id("start.customer_id", &self.customer_id, false)?;
        require_id("start.queue", &self.queue, false)?;
        require_id("start.agent_id", &self.agent_id, false)
    }
}

/// Checks one id field.
///
/// # Errors
/// Missing (when required) or longer than [`MAX_ID_BYTES`].
pub fn require_id(field: &'static str, value: &str, required: bool) -> Result<(), ScreenError> {
    if required && value.is_empty() {
        return Err(ScreenError::invalid(field, "is required"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ScreenError::invalid(field, format!("longer than {MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

/// Checks a text field's size.
///
/// # Errors
/// Longer than [`MAX_TEXT_BYTES`].
pub fn check_text(field: &'static str, text: &str) -> Result<(), ScreenError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ScreenError::invalid(
            field,
            format!("{} bytes is longer than the limit of {MAX_TEXT_BYTES}", text.len()),
        ));
    }
    Ok(())
}

/// One incoming segment, decoded from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIn {
    /// Position in the conversation.
    pub seq: u64,
    /// Who spoke.
    pub speaker: Speaker,
    /// The text.
    pub text: String,
    /// Final text (true) or interim ASR hypothesis (false).
    pub is_final: bool,
}

/// The state of one open conversation.
#[derive(Debug)]
pub struct Conversation {
    info: ConversationInfo,
    last_seq: Option<u64>,
}

impl Conversation {
    /// Opens a conversation.
    pub fn new(info: ConversationInfo) -> Self {
        Self { info, last_seq: None }
    }

    /// Who the conversation belongs to.
    pub fn info(&self) -> &ConversationInfo {
        &self.info
    }

    /// Screens one segment and returns the alerts it raises (one per category).
    ///
    /// # Errors
    /// `InvalidArgument` for a seq that does not increase or an oversized text; `Internal`
    /// if the pipeline fails.
    pub fn screen(
        &mut self,
        pipeline: &Pipeline,
        ids: &AlertIds,
        segment: &SegmentIn,
    ) -> Result<Vec<Arc<Alert>>, ScreenError> {
        if let Some(last) = self.last_seq
            && segment.seq <= last
        {
            return Err(ScreenError::invalid(
                "segment.seq",
                format!("{} does not increase (last was {last})", segment.seq),
            ));
        }
        check_text("segment.text", &segment.text)?;
        self.last_seq = Some(segment.seq);
        if segment.speaker == Speaker::Agent || !segment.is_final {
            return Ok(Vec::new());
        }
        let detections = pipeline.screen(&segment.text)?;
        let created_at = SystemTime::now();
        Ok(detections
            .into_iter()
            .map(|d| {
                Arc::new(Alert {
                    alert_id: ids.next_id(),
                    conversation_id: self.info.conversation_id.clone(),
                    tenant_id: self.info.tenant_id.clone(),
                    queue: self.info.queue.clone(),
                    agent_id: self.info.agent_id.clone(),
                    seq: segment.seq,
                    category: d.category,
                    severity: d.severity,
                    evidence: d.evidence,
                    created_at,
                })
            })
            .collect())
    }
}
