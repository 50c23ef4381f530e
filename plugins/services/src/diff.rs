//! Plugin `io.containerd.grpc.v1.diff`: layers applied onto mounts and
//! diffs written as layers, by the first loaded differ.

use std::sync::Arc;

use corten_api::containerd::services::diff::v1::{
    diff_server::{Diff, DiffServer},
    ApplyRequest, ApplyResponse, DiffRequest, DiffResponse,
};
use corten_core::{
    diff::{self, DiffOptions, Differ},
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tonic::{Request, Response, Status};

use crate::{
    convert::{descriptor, descriptor_msg, mount},
    request,
    status::blocking,
};

#[derive(Clone)]
struct DiffService {
    differ: Arc<dyn Differ>,
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let layer = descriptor(r.diff)?;
        let mounts: Vec<_> = r.mounts.into_iter().map(mount).collect();
        let differ = self.differ.clone();
        let applied = blocking(move || differ.apply(&ns, &layer, &mounts)).await?;
        Ok(Response::new(ApplyResponse {
            applied: Some(descriptor_msg(applied)),
        }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let lease = request::lease(request.metadata())?;
        let r = request.into_inner();
        let lower: Vec<_> = r.left.into_iter().map(mount).collect();
        let upper: Vec<_> = r.right.into_iter().map(mount).collect();
        let options = DiffOptions {
            media_type: r.media_type,
            reference: r.r#ref,
            labels: r.labels.into_iter().collect(),
            lease,
        };
        let differ = self.differ.clone();
        let written = blocking(move || differ.compare(&ns, &lower, &upper, options)).await?;
        Ok(Response::new(DiffResponse {
            diff: Some(descriptor_msg(written)),
        }))
    }
}

struct DiffServicePlugin;

impl Plugin for DiffServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "diff";
    const REQUIRES: &'static [&'static str] = &[diff::PLUGIN_TYPE];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let differ: Arc<dyn Differ> = ctx.get(diff::PLUGIN_TYPE)?;
        let server = with_limits!(DiffServer::new(DiffService { differ }), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(DiffServicePlugin);
