//! The registry side of a pull, over `oci-client`: resolving a reference to
//! a digest, fetching manifests by digest, and streaming blobs from an
//! offset (so an interrupted download resumes). Every failure becomes a
//! domain error that names the object and says whose fault it is:
//! unreachable registries are Unavailable (worth retrying), missing objects
//! NotFound, refusals FailedPrecondition.

use std::time::Duration;

use bytes::Bytes;
use corten_core::{digest::Digest, transfer::Credentials, Error};
use futures::stream::BoxStream;
use oci_client::{
    client::{ClientConfig, ClientProtocol, LayerDescriptor},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
    Client,
};

use crate::{media, reference::ImageRef};

const USER_AGENT: &str = concat!("corten/", env!("CARGO_PKG_VERSION"));

/// A blob's bytes as the registry sends them.
pub struct BlobBody {
    /// Where the bytes start: the offset asked for, or 0 when the registry
    /// ignored the range and sends everything.
    pub start: u64,
    /// What the registry says it will send, when it says.
    pub length: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

pub struct Remote {
    client: Client,
    auth: RegistryAuth,
    image: ImageRef,
}

/// What a credential answer means to oci-client.
pub fn registry_auth(credentials: Credentials) -> Result<RegistryAuth, Error> {
    use base64::Engine as _;
    match credentials {
        Credentials::Anonymous => Ok(RegistryAuth::Anonymous),
        Credentials::Basic { username, password } => Ok(RegistryAuth::Basic(username, password)),
        Credentials::Header(header) => match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Ok(RegistryAuth::Bearer(token.trim().to_string()))
            }
            Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| Error::InvalidArgument("basic authorization header is not base64 text".into()))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| Error::InvalidArgument("basic authorization header has no user:password".into()))?;
                Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
            }
            _ => Err(Error::InvalidArgument(
                "authorization header must be `Bearer <token>` or `Basic <base64>`".into(),
            )),
        },
        Credentials::RefreshToken(_) => Err(Error::Unimplemented(
            "identity (refresh) tokens are not supported: give a user name and password or token".into(),
        )),
    }
}

impl Remote {
    pub fn new(image: &ImageRef, plain_http: bool, auth: RegistryAuth) -> Result<Remote, Error> {
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| Error::Internal(format!("registry client for {}: {e}", image.registry())))?;
        Ok(Remote {
            client,
            auth,
            image: image.clone(),
        })
    }

    /// The digest the reference names: its own digest, or what the registry
    /// says the tag points at.
    pub async fn resolve(&self) -> Result<Digest, OciDistributionError> {
        if let Some(digest) = self.image.digest() {
            return Ok(digest);
        }
        let digest = self.client.fetch_manifest_digest(&self.image.inner, &self.auth).await?;
        digest
            .parse()
            .map_err(|e: Error| OciDistributionError::GenericError(Some(e.to_string())))
    }

    /// A manifest or index by digest; oci-client checks the bytes against
    /// the digest.
    pub async fn manifest(&self, digest: &Digest, what: &str) -> Result<Bytes, Error> {
        let reference = self.image.at(digest);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, media::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.classify(e, what))?;
        Ok(bytes)
    }

    /// A blob from `offset` on.
    pub async fn blob(&self, digest: &Digest, offset: u64, what: &str) -> Result<BlobBody, Error> {
        let digest_text = digest.to_string();
        let layer = LayerDescriptor {
            digest: &digest_text,
            urls: &None,
        };
        // The store checks the digest of what is written, from the first
        // byte on, so oci-client's own check (which a range skips) is not
        // relied on.
        self.client
            .store_auth_if_needed(self.image.inner.resolve_registry(), &self.auth)
            .await;
        let response = self
            .client
            .pull_blob_stream_partial(&self.image.inner, &layer, offset, None)
            .await
            .map_err(|e| self.classify(e, what))?;
        Ok(match response {
            oci_client::client::BlobResponse::Partial(s) => BlobBody {
                start: offset,
                length: s.content_length,
                stream: s.stream,
            },
            oci_client::client::BlobResponse::Full(s) => BlobBody {
                start: 0,
                length: s.content_length,
                stream: s.stream,
            },
        })
    }

    pub fn host(&self) -> &str {
        self.image.registry()
    }

    /// Maps an oci-client failure about `what` to a domain error.
    pub fn classify(&self, err: OciDistributionError, what: &str) -> Error {
        classify(err, what, self.host())
    }
}

/// Whether the registry asked for (other) credentials.
pub fn is_unauthorized(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        OciDistributionError::ServerError { code, .. } => *code == 401,
        _ => false,
    }
}

/// The whole chain of an error on one line (reqwest hides the useful part,
/// "Connection refused", in its sources).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = strip_os_error(&cause.to_string());
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// "Connection refused (os error 111)" without the number.
fn strip_os_error(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text.to_string(),
    }
}

pub fn classify(err: OciDistributionError, what: &str, host: &str) -> Error {
    if is_unauthorized(&err) {
        return Error::FailedPrecondition(format!(
            "{what}: registry {host} refused access (unauthorized): give credentials with --user or in a docker config.json"
        ));
    }
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::ManifestBlobUnknown
                )
            });
            let detail = messages.join("; ");
            if not_found {
                Error::NotFound(format!("{what} in registry {host} ({detail})"))
            } else {
                Error::FailedPrecondition(format!("{what}: registry {host} refused: {detail}"))
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let message = message.trim();
            match code {
                404 => Error::NotFound(format!("{what} in registry {host}")),
                408 | 429 | 500..=599 => {
                    Error::Unavailable(format!("{what}: registry {host} answered {code}: {message}"))
                }
                _ => Error::FailedPrecondition(format!("{what}: registry {host} answered {code}: {message}")),
            }
        }
        OciDistributionError::ImageManifestNotFoundError(m) => {
            Error::NotFound(format!("{what} in registry {host} ({m})"))
        }
        OciDistributionError::RequestError(e) => {
            Error::Unavailable(format!("{what}: cannot reach registry {host}: {}", chain(&e)))
        }
        OciDistributionError::IoError(e) => Error::Unavailable(format!("{what}: registry {host}: {}", chain(&e))),
        OciDistributionError::DigestError(e) => Error::FailedPrecondition(format!(
            "{what}: registry {host} sent content that does not match its digest: {e}"
        )),
        other => Error::FailedPrecondition(format!("{what}: registry {host}: {}", chain(&other))),
    }
}
