//! Plugin `io.containerd.grpc.v1.images`: `ctr images ...` and every client
//! that pulls, tags or removes images.

use std::sync::Arc;

use corten_api::containerd::services::images::v1::{
    images_server::{Images as ImagesApi, ImagesServer},
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse, Image as ImageMsg,
    ImageCreate, ImageDelete, ImageUpdate, ListImagesRequest, ListImagesResponse, UpdateImageRequest,
    UpdateImageResponse,
};
use corten_core::{
    events::Exchange,
    filters::Filter,
    gc::Collector,
    grpc::GrpcService,
    images::{Image, Images},
    metadata::{self, MetaStore},
    plugin::{InitContext, InitError, Instance, NoConfig, Plugin},
    register_plugin,
};
use tonic::{Request, Response, Status};

use crate::{
    convert::{descriptor, descriptor_msg},
    publish::publish,
    request,
    status::{blocking, inline, to_status},
};

#[derive(Clone)]
struct ImagesService {
    images: Images,
    events: Arc<dyn Exchange>,
    collector: Option<Arc<dyn Collector>>,
}

fn image_msg(image: Image) -> ImageMsg {
    ImageMsg {
        name: image.name,
        labels: image.labels.into_iter().collect(),
        target: Some(descriptor_msg(image.target)),
        created_at: Some(image.created_at.into()),
        updated_at: Some(image.updated_at.into()),
    }
}

fn image(msg: Option<ImageMsg>) -> Result<Image, Status> {
    let msg = msg.ok_or_else(|| Status::invalid_argument("an image is required"))?;
    Ok(Image {
        name: msg.name,
        labels: msg.labels.into_iter().collect(),
        target: descriptor(msg.target)?,
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
    })
}

#[tonic::async_trait]
impl ImagesApi for ImagesService {
    async fn get(&self, request: Request<GetImageRequest>) -> Result<Response<GetImageResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let name = request.into_inner().name;
        let found = inline(|| self.images.get(&ns, &name))?;
        Ok(Response::new(GetImageResponse {
            image: Some(image_msg(found)),
        }))
    }

    async fn list(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let filter = Filter::parse_all(&request.get_ref().filters).map_err(to_status)?;
        let images = self.images.clone();
        let all = blocking(move || images.list(&ns)).await?;
        let images = all.into_iter().filter(|i| filter.matches(i)).map(image_msg).collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(&self, request: Request<CreateImageRequest>) -> Result<Response<CreateImageResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let new = image(request.into_inner().image)?;
        let (images, ns2) = (self.images.clone(), ns.clone());
        let created = blocking(move || images.create(&ns2, &new)).await?;
        let event = ImageCreate {
            name: created.name.clone(),
            labels: created.labels.clone().into_iter().collect(),
        };
        publish(
            &self.events,
            &ns,
            "/images/create",
            "containerd.services.images.v1.ImageCreate",
            &event,
        );
        Ok(Response::new(CreateImageResponse {
            image: Some(image_msg(created)),
        }))
    }

    async fn update(&self, request: Request<UpdateImageRequest>) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let msg = r
            .image
            .ok_or_else(|| Status::invalid_argument("an image is required"))?;
        // `ctr images label` sends a name, labels and a mask of labels
        // only: no target to parse then.
        let sets_target = paths.is_empty() || paths.iter().any(|p| p == "target" || p.starts_with("target."));
        let target = if sets_target {
            Some(descriptor(msg.target)?)
        } else {
            None
        };
        let labels = msg.labels.into_iter().collect();
        let (images, ns2) = (self.images.clone(), ns.clone());
        let updated = blocking(move || images.update(&ns2, &msg.name, &labels, target.as_ref(), &paths)).await?;
        let event = ImageUpdate {
            name: updated.name.clone(),
            labels: updated.labels.clone().into_iter().collect(),
        };
        publish(
            &self.events,
            &ns,
            "/images/update",
            "containerd.services.images.v1.ImageUpdate",
            &event,
        );
        Ok(Response::new(UpdateImageResponse {
            image: Some(image_msg(updated)),
        }))
    }

    async fn delete(&self, request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = request::namespace(request.metadata())?;
        let r = request.into_inner();
        let (images, ns2, name) = (self.images.clone(), ns.clone(), r.name.clone());
        blocking(move || images.delete(&ns2, &name)).await?;
        publish(
            &self.events,
            &ns,
            "/images/delete",
            "containerd.services.images.v1.ImageDelete",
            &ImageDelete { name: r.name },
        );
        if let (true, Some(collector)) = (r.sync, self.collector.clone()) {
            blocking(move || collector.collect()).await?;
        }
        Ok(Response::new(()))
    }
}

struct ImagesServicePlugin;

impl Plugin for ImagesServicePlugin {
    const TYPE: &'static str = corten_core::grpc::PLUGIN_TYPE;
    const ID: &'static str = "images";
    const REQUIRES: &'static [&'static str] = &[metadata::PLUGIN_TYPE, "io.containerd.gc.v1", "io.containerd.event.v1"];
    type Config = NoConfig;

    async fn init(ctx: InitContext, _: NoConfig) -> Result<Instance, InitError> {
        let store: Arc<dyn MetaStore> = ctx.get(metadata::PLUGIN_TYPE)?;
        let events: Arc<dyn Exchange> = ctx.get("io.containerd.event.v1")?;
        let collector: Option<Arc<dyn Collector>> = ctx.get("io.containerd.gc.v1").ok();
        let service = ImagesService {
            images: Images::new(store),
            events,
            collector,
        };
        let server = with_limits!(ImagesServer::new(service), ctx);
        Ok(Instance::new(GrpcService::new(move |routes| {
            routes.add_service(server.clone());
        })))
    }
}

register_plugin!(ImagesServicePlugin);
