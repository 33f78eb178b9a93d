//! Request validation: any bytes on the wire decode (or fail to) as a `ScreenRequest` or
//! `ScreenTextRequest`, and whatever decodes goes through the same checks the handlers apply,
//! each rejection becoming an INVALID_ARGUMENT status with a field violation.
#![no_main]

use std::time::SystemTime;

use kasuhara_guard::conversation::{ConversationInfo, check_text, require_id};
use kasuhara_guard::error::ScreenError;
use kasuhara_guard::grpc::speaker_from_pb;
use kasuhara_guard::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn rejected(result: Result<(), ScreenError>) {
    if let Err(error) = result {
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(!status.details().is_empty(), "no field violation: {status:?}");
    }
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = pb::ScreenRequest::decode(bytes) {
        match request.kind {
            Some(pb::screen_request::Kind::Start(start)) => {
                if let Some(t) = start.started_at {
                    let _ = SystemTime::try_from(t);
                }
                let info = ConversationInfo {
                    conversation_id: start.conversation_id,
                    tenant_id: start.tenant_id,
                    customer_id: start.customer_id,
                    queue: start.queue,
                    agent_id: start.agent_id,
                    started_at: SystemTime::UNIX_EPOCH,
                };
                rejected(info.validate());
            }
            Some(pb::screen_request::Kind::Segment(segment)) => {
                rejected(speaker_from_pb("segment.speaker", segment.speaker).map(drop));
                rejected(check_text("segment.text", &segment.text));
            }
            Some(pb::screen_request::Kind::End(_)) | None => {}
        }
    }
    if let Ok(request) = pb::ScreenTextRequest::decode(bytes) {
        rejected(require_id("tenant_id", &request.tenant_id, true));
        rejected(speaker_from_pb("speaker", request.speaker).map(drop));
        rejected(check_text("text", &request.text));
    }
});
