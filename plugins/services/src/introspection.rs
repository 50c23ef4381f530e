//! Plugin `io.containerd.grpc.v1.introspection`: what `ctr plugins ls` and
//! `ctr info` show.

use std::{os::unix::fs::MetadataExt, path::Path, sync::Arc};

use corten_api::{
    containerd::services::introspection::v1::{
        introspection_server::{Introspection, IntrospectionServer},
        Plugin as PluginInfo, PluginsRequest, PluginsResponse, ServerResponse,
    },
    google::rpc::Status as RpcStatus,
};
use corten_core::{
    filters::{Adaptor, Filter},
    grpc::GrpcService,
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin, PluginRecord, PluginSet, Status as InitStatus},
    register_plugin,
};
use tonic::{Request, Response, Status};

use crate::status::to_status;

#[derive(Clone)]
struct IntrospectionService {
    plugins: Arc<PluginSet>,
    uuid: String,
}

/// Filter fields: `type`, `id`, `capabilities` (present when any), `status`.
struct RecordFields<'a>(&'a PluginRecord);

impl Adaptor for RecordFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let r = self.0;
        match path.first()?.as_str() {
            "type" => Some(r.plugin_type.to_string()),
            "id" => Some(r.id.to_string()),
            "capabilities" if !r.capabilities.is_empty() => Some(r.capabilities.join(",")),
            "status" => Some(status_word(&r.status).to_string()),
            _ => None,
        }
    }
}

fn status_word(status: &InitStatus) -> &'static str {
    match status {
        InitStatus::Ok => "ok",
        InitStatus::Skipped(_) => "skip",
        InitStatus::Failed(_) => "error",
    }
}

/// `ctr plugins ls` calls a plugin "skip" when init_err's message contains
/// "skip plugin", and "error" otherwise.
fn init_err(status: &InitStatus) -> Option<RpcStatus> {
    let message = match status {
        InitStatus::Ok => return None,
        InitStatus::Skipped(reason) => format!("{reason}: skip plugin"),
        InitStatus::Failed(reason) => reason.clone(),
    };
    Some(RpcStatus {
        code: tonic::Code::Unknown as i32,
        message,
        details: vec![],
    })
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(&self, request: Request<PluginsRequest>) -> Result<Response<PluginsResponse>, Status> {
        let filter = Filter::parse_all(&request.into_inner().filters).map_err(to_status)?;
        let plugins = self
            .plugins
            .records()
            .iter()
            .filter(|r| filter.matches(&RecordFields(r)))
            .map(|r| PluginInfo {
                r#type: r.plugin_type.to_string(),
                id: r.id.to_string(),
                requires: r.requires.iter().map(|s| s.to_string()).collect(),
                platforms: vec![],
                exports: r.exports.clone().into_iter().collect(),
                capabilities: r.capabilities.clone(),
                init_err: init_err(&r.status),
            })
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        let pidns = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).unwrap_or(0);
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            pid: std::process::id().into(),
            pidns,
        }))
    }
}

/// The server's UUID, made once and kept under the plugin's root so a
/// restarted daemon is recognisably the same one.
fn load_or_create_uuid(root: &Path) -> std::io::Result<String> {
    let path = root.join("uuid");
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_string()),
        Ok(_) => tracing::warn!("{} is not a UUID; making a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(root)?;
    let id = uuid::Uuid::new_v4().to_string();
    // Written aside and renamed, so a crash never leaves a half-written id.
    let tmp = root.join("uuid.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

struct IntrospectionPlugin;

impl Plugin for IntrospectionPlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "introspection";
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let uuid = load_or_create_uuid(&ctx.root).map_err(|e| InitError::failed("server uuid", e))?;
        let service = IntrospectionService {
            plugins: ctx.plugins(),
            uuid,
        };
        let server = with_limits!(IntrospectionServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(IntrospectionPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_survives_reload() {
        let dir = std::env::temp_dir().join(format!("corten-uuid-{}", std::process::id()));
        let a = load_or_create_uuid(&dir).unwrap();
        assert_eq!(load_or_create_uuid(&dir).unwrap(), a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn skip_reads_as_skip_in_ctr() {
        let e = init_err(&InitStatus::Skipped("no overlay".into())).unwrap();
        assert!(e.message.contains("skip plugin"));
        assert!(init_err(&InitStatus::Ok).is_none());
    }
}
