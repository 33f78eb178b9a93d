//! `AdminService`: operations on the running server. Handlers stay thin (decode, call, encode)
//! so an authorisation check sits in one line at their top.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::Role;
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use crate::reload::{ReloadError, ReloadReport};
use crate::server::Shared;

/// The `AdminService` implementation.
#[derive(Debug, Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    /// A service over the shared server state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn reload_lexicons(
        &self,
        request: Request<pb::ReloadLexiconsRequest>,
    ) -> Result<Response<pb::ReloadLexiconsResponse>, Status> {
        // A reload concerns every tenant, so only the role is checked.
        crate::auth::authorize(&request, Role::Admin, "")?;
        let report = self.shared.rules.reload().await.map_err(reload_status)?;
        Ok(Response::new(report_to_pb(&report)))
    }
}

fn report_to_pb(report: &ReloadReport) -> pb::ReloadLexiconsResponse {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::ReloadLexiconsResponse {
        entries: count(report.entries),
        context_rules: count(report.context_rules),
        patterns: count(report.patterns),
        tenant_pipelines: count(report.tenant_pipelines),
        tenant_policies: count(report.tenant_policies),
        elapsed: prost_types::Duration::try_from(report.elapsed).ok(),
        generation: report.generation,
    }
}

/// FAILED_PRECONDITION: the files are broken, not the request. Every problem is a precondition
/// violation (type LEXICON or POLICY, subject `file:line`) and a line of the message.
fn reload_status(error: ReloadError) -> Status {
    let mut details = ErrorDetails::new();
    for problem in &error.0 {
        details.add_precondition_failure_violation(
            problem.kind.as_str(),
            problem.location.clone(),
            problem.message.clone(),
        );
    }
    Status::with_error_details(Code::FailedPrecondition, error.to_string(), details)
}
