//! Errors at the screening boundary and their one mapping to gRPC statuses.
//!
//! Messages never carry transcript text: they name the field and the limit, which is all a
//! client needs to fix its request (and all a log may hold).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a screening request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScreenError {
    /// A field is missing, malformed or too large.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The request field, as named in the proto (`segment.text`).
        field: &'static str,
        /// What is wrong with it, without its value.
        description: String,
    },
    /// The conversation id is already live on another stream.
    #[error("{field}: {description}")]
    AlreadyExists {
        /// The request field that names the conflict.
        field: &'static str,
        /// What conflicts.
        description: String,
    },
    /// A limit is reached: open conversations, or segments per second.
    #[error("{field}: {description}")]
    ResourceExhausted {
        /// The request (part) that is over the limit.
        field: &'static str,
        /// Which limit, and its value.
        description: String,
    },
    /// The request is valid but out of order (a segment before `ConversationStart`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request names something the server does not have (an unknown alert id).
    #[error("{0}")]
    NotFound(&'static str),
    /// The request carries no valid bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The token is valid but may not do this (wrong role or tenant).
    #[error("{0}")]
    PermissionDenied(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    Unavailable,
    /// A bug or an unexpected failure; the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ScreenError {
    /// Shorthand for an invalid field.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        ScreenError::InvalidArgument { field, description: description.into() }
    }
}

impl From<ScreenError> for Status {
    fn from(error: ScreenError) -> Status {
        let status = match error {
            ScreenError::InvalidArgument { field, description } => {
                let message = format!("invalid {field}: {description}");
                let details = ErrorDetails::with_bad_request_violation(field, description);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ScreenError::AlreadyExists { field, description } => {
                let details = ErrorDetails::with_bad_request_violation(field, description.clone());
                Status::with_error_details(Code::AlreadyExists, description, details)
            }
            ScreenError::ResourceExhausted { field, description } => {
                let details = ErrorDetails::with_bad_request_violation(field, description.clone());
                Status::with_error_details(Code::ResourceExhausted, description, details)
            }
            ScreenError::FailedPrecondition(message) => Status::failed_precondition(message),
            ScreenError::NotFound(message) => Status::not_found(message),
            ScreenError::Unauthenticated(message) => Status::unauthenticated(message),
            ScreenError::PermissionDenied(message) => Status::permission_denied(message),
            ScreenError::Unavailable => Status::unavailable("server is shutting down"),
            ScreenError::Internal(detail) => {
                tracing::error!(%detail, "internal screening error");
                Status::internal("internal error")
            }
        };
        // Every refusal the service makes passes through here, so it is counted here.
        crate::telemetry::request_rejected(status.code());
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invalid arguments carry a BadRequest field violation that clients can read.
    #[test]
    fn invalid_argument_has_field_violation() {
        let status = Status::from(ScreenError::invalid("segment.text", "longer than 4096 bytes"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request detail");
        assert_eq!(bad.field_violations[0].field, "segment.text");
    }

    /// Internal errors never leak their detail to the client.
    #[test]
    fn internal_is_generic() {
        let status = Status::from(ScreenError::Internal("lattice exploded".into()));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
