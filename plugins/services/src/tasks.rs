//! Plugin `io.containerd.grpc.v1.tasks`: `ctr run`, `ctr tasks ...` and every
//! client that runs containers. A thin layer: it finds the container record,
//! then hands each call to the runtime, which talks to the task's shim.

use std::{sync::Arc, time::SystemTime};

use corten_api::{
    containerd::{
        services::tasks::v1::{
            tasks_server::{Tasks as TasksApi, TasksServer},
            CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, CreateTaskRequest, CreateTaskResponse,
            DeleteProcessRequest, DeleteResponse, DeleteTaskRequest, ExecProcessRequest, GetRequest, GetResponse,
            KillRequest, ListPidsRequest, ListPidsResponse, ListTasksRequest, ListTasksResponse, MetricsRequest,
            MetricsResponse, PauseTaskRequest, ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse,
            UpdateTaskRequest, WaitRequest, WaitResponse,
        },
        types::Metric,
        v1::types::{Process, ProcessInfo as ProcessInfoMsg, Status as StatusMsg},
    },
    prost_types,
};
use corten_core::{
    any_value::AnyValue,
    containers::Containers,
    filters::{Adaptor, Filter},
    grpc::GrpcService,
    metadata::{self, MetaStore},
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
    runtime::{self, CreateOpts, Exit, ProcessState, Runtime, Status as TaskStatus, Stdio, Task},
    Error,
};
use futures::future::join_all;
use tonic::{Request, Response, Status};

use crate::{
    convert::mount,
    request,
    status::{inline, to_status},
};

#[derive(Clone)]
struct TasksService {
    containers: Containers,
    runtime: Arc<dyn Runtime>,
}

fn any_value(any: Option<prost_types::Any>) -> Option<AnyValue> {
    any.map(|a| AnyValue::new(a.type_url, a.value))
}

fn any_msg(value: AnyValue) -> prost_types::Any {
    prost_types::Any {
        type_url: value.type_url,
        value: value.value,
    }
}

fn timestamp(at: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    at.map(Into::into)
}

fn status_msg(status: TaskStatus) -> StatusMsg {
    match status {
        TaskStatus::Unknown => StatusMsg::Unknown,
        TaskStatus::Created => StatusMsg::Created,
        TaskStatus::Running => StatusMsg::Running,
        TaskStatus::Stopped => StatusMsg::Stopped,
        TaskStatus::Paused => StatusMsg::Paused,
        TaskStatus::Pausing => StatusMsg::Pausing,
    }
}

/// A process as the API shows it: `id` is the exec id, or the container id
/// for the init process (what `ctr tasks ls` prints as TASK).
fn process_msg(state: ProcessState) -> Process {
    let id = if state.exec_id.is_empty() {
        state.container_id.clone()
    } else {
        state.exec_id
    };
    Process {
        container_id: state.container_id,
        id,
        pid: state.pid,
        status: status_msg(state.status) as i32,
        stdin: state.io.stdin,
        stdout: state.io.stdout,
        stderr: state.io.stderr,
        terminal: state.io.terminal,
        exit_status: state.exit_status,
        exited_at: timestamp(state.exited_at),
    }
}

fn delete_msg(id: String, exit: Exit) -> DeleteResponse {
    DeleteResponse {
        id,
        pid: exit.pid,
        exit_status: exit.exit_status,
        exited_at: timestamp(exit.exited_at),
    }
}

/// Every task call names its container; an empty id is the client's mistake.
fn container_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("a container id is required"));
    }
    Ok(id)
}

/// Filter fields of `Metrics`: `id` and `namespace`.
struct TaskFields<'a>(&'a dyn Task);

impl Adaptor for TaskFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => Some(self.0.id().to_string()),
            [f] if f == "namespace" => Some(self.0.namespace().to_string()),
            _ => None,
        }
    }
}

impl TasksService {
    async fn task(&self, ns: &str, id: &str) -> Result<Arc<dyn Task>, Status> {
        let id = container_id(id)?;
        self.runtime.get(ns, id).await.map_err(to_status)
    }
}

#[tonic::async_trait]
impl TasksApi for TasksService {
    async fn create(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let id = container_id(&r.container_id)?.to_string();
        if r.checkpoint.is_some() {
            return Err(to_status(Error::Unimplemented(
                "restoring a task from a checkpoint is not supported".into(),
            )));
        }
        let container = inline(|| self.containers.get(&ns, &id))?;
        let spec = container
            .spec
            .ok_or_else(|| to_status(Error::FailedPrecondition(format!("container {id} has no runtime spec"))))?;
        let runtime = if r.runtime_path.is_empty() {
            container.runtime.name
        } else {
            r.runtime_path
        };
        let opts = CreateOpts {
            spec,
            rootfs: r.rootfs.into_iter().map(mount).collect(),
            io: Stdio {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
            runtime,
            runtime_options: container.runtime.options,
            task_options: any_value(r.options),
            checkpoint: String::new(),
        };
        let task = self.runtime.create(&ns, &id, opts).await.map_err(to_status)?;
        Ok(Response::new(CreateTaskResponse {
            container_id: id,
            pid: task.pid(),
        }))
    }

    async fn start(&self, request: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        let pid = task.start(&r.exec_id).await.map_err(to_status)?;
        Ok(Response::new(StartResponse { pid }))
    }

    async fn delete(&self, request: Request<DeleteTaskRequest>) -> Result<Response<DeleteResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let id = container_id(&request.get_ref().container_id)?.to_string();
        let exit = self.runtime.delete(&ns, &id).await.map_err(to_status)?;
        Ok(Response::new(delete_msg(id, exit)))
    }

    async fn delete_process(&self, request: Request<DeleteProcessRequest>) -> Result<Response<DeleteResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument(
                "an exec id is required; delete the task to remove its init process",
            ));
        }
        let task = self.task(&ns, &r.container_id).await?;
        let exit = task.delete_process(&r.exec_id).await.map_err(to_status)?;
        Ok(Response::new(delete_msg(r.exec_id, exit)))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        let state = task.state(&r.exec_id).await.map_err(to_status)?;
        Ok(Response::new(GetResponse {
            process: Some(process_msg(state)),
        }))
    }

    async fn list(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let tasks = self.runtime.list(&ns).await;
        // One shim per task: asking them together keeps a slow shim from
        // holding up the rest.
        let states = join_all(tasks.iter().map(|task| task.state(""))).await;
        let tasks = tasks
            .iter()
            .zip(states)
            .filter_map(|(task, state)| match state {
                Ok(state) => Some(process_msg(state)),
                // A task whose shim just went away is being cleaned up: leave
                // it out rather than fail the whole listing.
                Err(e) => {
                    tracing::warn!(namespace = %ns, id = task.id(), "task state: {e}");
                    None
                }
            })
            .collect();
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        task.kill(&r.exec_id, r.signal, r.all).await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("an exec id is required"));
        }
        let spec = any_value(r.spec).ok_or_else(|| Status::invalid_argument("a process spec is required"))?;
        let task = self.task(&ns, &r.container_id).await?;
        let io = Stdio {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            terminal: r.terminal,
        };
        task.exec(&r.exec_id, spec, io).await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        task.resize_pty(&r.exec_id, r.width, r.height)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        task.close_io(&r.exec_id, r.stdin).await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let task = self.task(&ns, &request.get_ref().container_id).await?;
        task.pause().await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let task = self.task(&ns, &request.get_ref().container_id).await?;
        task.resume().await.map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn list_pids(&self, request: Request<ListPidsRequest>) -> Result<Response<ListPidsResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let task = self.task(&ns, &request.get_ref().container_id).await?;
        let processes = task
            .pids()
            .await
            .map_err(to_status)?
            .into_iter()
            .map(|p| ProcessInfoMsg {
                pid: p.pid,
                info: p.info.map(any_msg),
            })
            .collect();
        Ok(Response::new(ListPidsResponse { processes }))
    }

    async fn checkpoint(
        &self,
        _request: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        Err(to_status(Error::Unimplemented(
            "checkpointing tasks is not supported".into(),
        )))
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        task.update(any_value(r.resources), r.annotations.into_iter().collect())
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn metrics(&self, request: Request<MetricsRequest>) -> Result<Response<MetricsResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        let tasks = self.runtime.list(&ns).await;
        let matching = tasks.iter().filter(|task| filter.matches(&TaskFields(task.as_ref())));
        // As in `list`: the shims together, each stamped when it answers.
        let metrics = join_all(matching.map(|task| async {
            match task.stats().await {
                Ok(data) => Some(Metric {
                    timestamp: Some(SystemTime::now().into()),
                    id: task.id().to_string(),
                    data: data.map(any_msg),
                }),
                Err(e) => {
                    tracing::warn!(namespace = %ns, id = task.id(), "task stats: {e}");
                    None
                }
            }
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let task = self.task(&ns, &r.container_id).await?;
        let exit = task.wait(&r.exec_id).await.map_err(to_status)?;
        Ok(Response::new(WaitResponse {
            exit_status: exit.exit_status,
            exited_at: timestamp(exit.exited_at),
        }))
    }
}

struct TasksServicePlugin;

impl Plugin for TasksServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "tasks";
    const REQUIRES: &'static [&'static str] = &[metadata::PLUGIN_TYPE, runtime::PLUGIN_TYPE];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let store: Arc<dyn MetaStore> = ctx.get(metadata::PLUGIN_TYPE)?;
        let runtime: Arc<dyn Runtime> = ctx.get(runtime::PLUGIN_TYPE)?;
        let service = TasksService {
            containers: Containers::new(store),
            runtime,
        };
        let server = with_limits!(TasksServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(TasksServicePlugin);
