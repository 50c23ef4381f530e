//! `corten version`: which client talks to which daemon.

use serde::Serialize;

use super::Context;
use crate::{error::rpc, output};

#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Debug, Serialize)]
struct Versions {
    client: ClientVersion,
    server: ServerVersion,
}

#[derive(Debug, Serialize)]
struct ClientVersion {
    version: &'static str,
}

#[derive(Debug, Serialize)]
struct ServerVersion {
    version: String,
    revision: String,
    uuid: String,
}

const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn run(_: Args, ctx: &Context) -> anyhow::Result<()> {
    if ctx.format == output::Format::Json {
        let server = query_server(ctx).await?;
        let client = ClientVersion {
            version: CLIENT_VERSION,
        };
        return output::print_json(&Versions { client, server });
    }
    // The client half is printed before connecting so it still shows when
    // the daemon is down, which is often why someone runs `version`.
    output::print(&client_section())?;
    let server = query_server(ctx).await?;
    output::print(&server_section(&server))?;
    Ok(())
}

async fn query_server(ctx: &Context) -> anyhow::Result<ServerVersion> {
    let conn = ctx.connect().await?;
    let version = conn.version().version(()).await.map_err(rpc)?.into_inner();
    let server = conn.introspection().server(()).await.map_err(rpc)?.into_inner();
    Ok(ServerVersion {
        version: version.version,
        revision: version.revision,
        uuid: server.uuid,
    })
}

fn field(name: &str, value: &str) -> String {
    format!("  {name:<10}{value}\n")
}

fn client_section() -> String {
    format!("Client:\n{}\n", field("Version:", CLIENT_VERSION))
}

fn server_section(server: &ServerVersion) -> String {
    format!(
        "Server:\n{}{}{}",
        field("Version:", &server.version),
        field("Revision:", &server.revision),
        field("UUID:", &server.uuid)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_align_values() {
        let server = ServerVersion {
            version: "0.1.0".into(),
            revision: "abc".into(),
            uuid: "u-1".into(),
        };
        assert_eq!(
            server_section(&server),
            "Server:\n  Version:  0.1.0\n  Revision: abc\n  UUID:     u-1\n"
        );
        assert!(client_section().starts_with("Client:\n  Version:  "));
    }
}
