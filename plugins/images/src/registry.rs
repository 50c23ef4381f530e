//! The registry side of a pull, over `oci-client`: resolving a reference to
//! a digest, fetching manifests by digest, and streaming blobs from an
//! offset (so an interrupted download resumes). Every failure becomes a
//! domain error that names the object and says whose fault it is:
//! unreachable registries are Unavailable (worth retrying), missing objects
//! NotFound, refusals FailedPrecondition.
//!
//! oci-client does the authentication (the challenge, basic auth, the token
//! dance and its token cache) and the blob downloads. Manifests are read
//! here, with the same authorization, because oci-client reads a manifest
//! whole into memory before anyone can look at its size: a registry could
//! send gigabytes as a "manifest". Here the announced length is checked
//! before the body is read, and the read stops at the bound whatever the
//! registry announced.

use std::time::Duration;

use bytes::Bytes;
use corten_core::{digest::Digest, transfer::Credentials, Error};
use futures::stream::BoxStream;
use oci_client::{
    client::{ClientConfig, ClientProtocol, LayerDescriptor},
    errors::{OciDistributionError, OciEnvelope, OciErrorCode},
    secrets::RegistryAuth,
    Client, RegistryOperation,
};
use reqwest::{header, StatusCode};
use tokio::sync::Mutex;

use crate::{media, oci::MAX_DOCUMENT_SIZE, reference::ImageRef};

const USER_AGENT: &str = concat!("corten/", env!("CARGO_PKG_VERSION"));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of an error answer is read for its message.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

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
    /// Manifest requests, read with a bound.
    http: reqwest::Client,
    scheme: &'static str,
    auth: RegistryAuth,
    image: ImageRef,
    /// The `Authorization` manifest requests carry, once worked out
    /// (`Some(None)`: none is needed).
    authorization: Mutex<Option<Option<String>>>,
}

/// How much of a manifest a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Exactly what its descriptor says, no byte more.
    Descriptor(u64),
    /// A document of unknown size: at most [`MAX_DOCUMENT_SIZE`].
    Largest,
}

/// A manifest read that could not finish.
pub enum Refused {
    /// What the registry answered, as oci-client would have said it.
    Registry(OciDistributionError),
    /// More bytes than the bound allows.
    TooLarge(Error),
}

impl Refused {
    /// Whether the registry asked for (other) credentials.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Refused::Registry(e) if is_unauthorized(e))
    }
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
        // reqwest's TLS needs a process-wide crypto provider (building a
        // client without one panics); one installed already is as good.
        static PROVIDER: std::sync::Once = std::sync::Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| Error::Internal(format!("registry client for {}: {e}", image.registry())))?;
        // Built as oci-client builds its own from the config above.
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| Error::Internal(format!("registry client for {}: {}", image.registry(), chain(&e))))?;
        Ok(Remote {
            client,
            http,
            scheme: if plain_http { "http" } else { "https" },
            auth,
            image: image.clone(),
            authorization: Mutex::new(None),
        })
    }

    /// The digest the reference names: its own digest, or what the registry
    /// says the tag points at (its `Docker-Content-Digest` on a HEAD, else
    /// the digest of the manifest, read with a bound). `what` names the
    /// image in errors.
    pub async fn resolve(&self, what: &str) -> Result<Digest, Refused> {
        if let Some(digest) = self.image.digest() {
            return Ok(digest);
        }
        let tag = self.image.inner.tag().unwrap_or("latest").to_string();
        let head = self
            .request(reqwest::Method::HEAD, &tag)
            .await
            .map_err(Refused::Registry)?;
        let status = head.status();
        if status.is_success() {
            if let Some(value) = head.headers().get("docker-content-digest") {
                let digest = value.to_str().ok().and_then(|text| text.parse().ok());
                return digest.ok_or_else(|| {
                    Refused::Registry(OciDistributionError::GenericError(Some(format!(
                        "its Docker-Content-Digest {value:?} is not a digest"
                    ))))
                });
            }
        } else if status == StatusCode::UNAUTHORIZED {
            return Err(Refused::Registry(status_error(status, &[], &self.manifest_url(&tag))));
        }
        // No digest on the HEAD (or no HEAD, or a refusal whose reason only
        // a GET's body tells): the manifest's own.
        self.read_manifest(&tag, Bound::Largest, what)
            .await
            .map(|bytes| crate::fetch::sha256(&bytes))
    }

    /// A manifest or index by digest, at most `bound` bytes (refused before
    /// it is read when the registry announces more). The caller checks the
    /// bytes against the digest.
    pub async fn manifest(&self, digest: &Digest, what: &str, bound: Bound) -> Result<Bytes, Error> {
        self.read_manifest(&digest.to_string(), bound, what)
            .await
            .map_err(|e| self.refused(e, what))
    }

    fn manifest_url(&self, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{reference}",
            self.scheme,
            self.image.inner.resolve_registry(),
            self.image.repository()
        )
    }

    /// The `Authorization` for manifest requests: the bearer token oci-client
    /// gets from the registry's token server (cached in it for the blob
    /// requests too), or the basic credentials the registry challenges for.
    /// `fresh` asks again (a token may have expired).
    async fn authorization(&self, fresh: bool) -> Option<String> {
        use base64::Engine as _;
        let mut cached = self.authorization.lock().await;
        if let (Some(value), false) = (cached.as_ref(), fresh) {
            return value.clone();
        }
        let value = match self
            .client
            .auth(&self.image.inner, &self.auth, RegistryOperation::Pull)
            .await
        {
            Ok(Some(token)) => Some(format!("Bearer {token}")),
            // A basic challenge, no challenge, or a token server that
            // refused: the credentials as they are, if any.
            Ok(None) | Err(_) => match &self.auth {
                RegistryAuth::Basic(user, password) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                )),
                RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
                RegistryAuth::Anonymous => None,
            },
        };
        *cached = Some(value.clone());
        value
    }

    /// `method` on the manifest `reference` (a tag or digest), authorized;
    /// on a 401 once more with fresh authorization.
    async fn request(
        &self,
        method: reqwest::Method,
        reference: &str,
    ) -> Result<reqwest::Response, OciDistributionError> {
        let url = self.manifest_url(reference);
        let mut fresh = false;
        loop {
            let authorization = self.authorization(fresh).await;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(header::ACCEPT, media::ACCEPTED_MANIFESTS.join(", "));
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await?;
            if response.status() == StatusCode::UNAUTHORIZED && authorization.is_some() && !fresh {
                fresh = true;
                continue;
            }
            return Ok(response);
        }
    }

    async fn read_manifest(&self, reference: &str, bound: Bound, what: &str) -> Result<Bytes, Refused> {
        let mut response = self
            .request(reqwest::Method::GET, reference)
            .await
            .map_err(Refused::Registry)?;
        let status = response.status();
        if !status.is_success() {
            let url = self.manifest_url(reference);
            let body = read_bounded(&mut response, ERROR_BODY_LIMIT)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err(Refused::Registry(status_error(status, &body, &url)));
        }
        let limit = match bound {
            Bound::Descriptor(size) => size,
            Bound::Largest => MAX_DOCUMENT_SIZE,
        };
        let too_large = |said: String| {
            let host = self.host();
            Refused::TooLarge(match bound {
                Bound::Descriptor(size) => Error::FailedPrecondition(format!(
                    "{what}: size mismatch: registry {host} {said}, the descriptor says {size}"
                )),
                Bound::Largest => Error::InvalidArgument(format!(
                    "{what}: registry {host} {said}, more than the {MAX_DOCUMENT_SIZE} a manifest may have"
                )),
            })
        };
        if let Some(length) = response.content_length().filter(|&l| l > limit) {
            return Err(too_large(format!("announces {length} bytes")));
        }
        match read_bounded(&mut response, limit).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(too_large(format!("sends more than {limit} bytes"))),
            Err(e) => Err(Refused::Registry(e.into())),
        }
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
        classify(err, what, self.host(), &self.auth)
    }

    /// Maps a failed manifest read about `what` to a domain error.
    pub fn refused(&self, refused: Refused, what: &str) -> Error {
        match refused {
            Refused::Registry(e) => self.classify(e, what),
            Refused::TooLarge(e) => e,
        }
    }
}

/// Why a registry turned `auth` away, for a person to act on (never the
/// secret itself).
fn refusal(what: &str, host: &str, auth: &RegistryAuth) -> String {
    match auth {
        RegistryAuth::Anonymous => format!(
            "{what}: registry {host} refused access (unauthorized): no credentials for {host} were given: \
             give them with --user or in a docker config.json"
        ),
        RegistryAuth::Basic(user, _) => format!(
            "{what}: registry {host} refused the credentials of user {user:?} (unauthorized): \
             check the user name and password"
        ),
        RegistryAuth::Bearer(_) => {
            format!("{what}: registry {host} refused the bearer token it was given (unauthorized)")
        }
    }
}

/// The body, unless it is longer than `limit` (`None`: the rest is not read).
async fn read_bounded(response: &mut reqwest::Response, limit: u64) -> Result<Option<Bytes>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.into()))
}

/// A registry's refusal of `url`, as oci-client reports one.
fn status_error(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let url = url.to_string();
    match status {
        StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url },
        s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code: s.as_u16(),
                url,
                message: String::from_utf8_lossy(body).into_owned(),
            },
        },
        s => OciDistributionError::ServerError {
            code: s.as_u16(),
            url,
            message: String::from_utf8_lossy(body).into_owned(),
        },
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

pub fn classify(err: OciDistributionError, what: &str, host: &str, auth: &RegistryAuth) -> Error {
    if is_unauthorized(&err) {
        return Error::FailedPrecondition(refusal(what, host, auth));
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

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        net::{TcpListener, TcpStream},
        sync::{
            atomic::{AtomicU64, Ordering},
            Arc,
        },
        time::Duration,
    };

    use super::*;

    /// What the fake registry's manifest endpoint does.
    #[derive(Clone, Copy)]
    enum Serve {
        /// Bytes without end (no Content-Length), until the client hangs up
        /// or 256 MiB went out.
        Endless,
        /// Announces 1 GiB, sends a little, then waits for the client to
        /// hang up.
        Announces,
        /// This body, with its Content-Length.
        Body(&'static [u8]),
        /// As `Body`, but a HEAD carries no Docker-Content-Digest.
        NoDigestOnHead(&'static [u8]),
    }

    const ENDLESS_CAP: u64 = 256 << 20;

    /// A registry on a loopback port that answers `/v2/` (no auth) and
    /// serves manifests as `serve` says; counts the manifest bytes it sent.
    fn fake_registry(serve: Serve) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(stream) = stream else { return };
                let counter = counter.clone();
                std::thread::spawn(move || answer(stream, serve, &counter));
            }
        });
        (host, sent)
    }

    fn answer(mut stream: TcpStream, serve: Serve, sent: &AtomicU64) {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
        }
        let head = request.starts_with("HEAD ");
        if !request.contains("/manifests/") {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            return;
        }
        let json = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close";
        match serve {
            Serve::Endless => {
                let _ = write!(stream, "HTTP/1.1 200 OK\r\n{json}\r\n\r\n");
                let chunk = vec![b' '; 64 << 10];
                while sent.load(Ordering::SeqCst) < ENDLESS_CAP && stream.write_all(&chunk).is_ok() {
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            }
            Serve::Announces => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\n{json}\r\nContent-Length: {}\r\n\r\n",
                    1u64 << 30
                );
                let _ = stream.write_all(&[b' '; 1024]);
                sent.fetch_add(1024, Ordering::SeqCst);
                // Until the client hangs up (or the read timeout).
                let _ = std::io::Read::read(&mut reader, &mut [0u8; 1]);
            }
            Serve::Body(body) | Serve::NoDigestOnHead(body) => {
                let digest = crate::fetch::sha256(body);
                let digest_header = match (serve, head) {
                    (Serve::NoDigestOnHead(_), true) => String::new(),
                    _ => format!("Docker-Content-Digest: {digest}\r\n"),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\n{json}\r\n{digest_header}Content-Length: {}\r\n\r\n",
                    body.len()
                );
                if !head {
                    let _ = stream.write_all(body);
                    sent.fetch_add(body.len() as u64, Ordering::SeqCst);
                }
            }
        }
    }

    fn remote(host: &str) -> Remote {
        let image = ImageRef::parse(&format!("{host}/test/big:v1")).unwrap();
        Remote::new(&image, true, RegistryAuth::Anonymous).unwrap()
    }

    fn some_digest() -> Digest {
        crate::fetch::sha256(b"whatever")
    }

    #[tokio::test]
    async fn an_endless_manifest_is_cut_off_at_the_bound() {
        let (host, sent) = fake_registry(Serve::Endless);
        let err = remote(&host)
            .manifest(&some_digest(), "manifest M", Bound::Largest)
            .await
            .unwrap_err();
        let Error::InvalidArgument(message) = err else {
            panic!("{err:?}")
        };
        assert!(message.contains("manifest M") && message.contains(&host), "{message}");
        assert!(message.contains("sends more than 16777216 bytes"), "{message}");
        // The client stopped reading at the bound: what went out beyond it
        // is what the sockets buffer, far from the server's cap.
        let sent = sent.load(Ordering::SeqCst);
        assert!(sent < 64 << 20, "{sent} bytes were sent");

        // A tag resolved without a digest on the HEAD reads the manifest,
        // bounded the same way.
        let (host, _) = fake_registry(Serve::Endless);
        let remote = remote(&host);
        let refused = remote.resolve("image I").await.err().unwrap();
        assert!(!refused.is_unauthorized());
        let err = remote.refused(refused, "image I");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.starts_with("image I: ") && m.contains("sends more than")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_announced_oversize_is_refused_before_the_body_is_read() {
        let (host, _) = fake_registry(Serve::Announces);
        let err = remote(&host)
            .manifest(&some_digest(), "manifest M", Bound::Largest)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("announces 1073741824 bytes")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_manifest_longer_than_its_descriptor_is_refused() {
        static BODY: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let (host, _) = fake_registry(Serve::Body(BODY));
        let digest = crate::fetch::sha256(BODY);
        let remote = remote(&host);
        let bytes = remote
            .manifest(&digest, "manifest M", Bound::Descriptor(BODY.len() as u64))
            .await
            .unwrap();
        assert_eq!(&bytes[..], BODY);
        let err = remote
            .manifest(&digest, "manifest M", Bound::Descriptor(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("size mismatch") && m.contains("the descriptor says 10")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn resolve_takes_the_digest_from_the_head_or_the_body() {
        static BODY: &[u8] = br#"{"schemaVersion":2}"#;
        for serve in [Serve::Body(BODY), Serve::NoDigestOnHead(BODY)] {
            let (host, sent) = fake_registry(serve);
            let digest = remote(&host).resolve("image I").await.ok().unwrap();
            assert_eq!(digest, crate::fetch::sha256(BODY));
            let fetched = sent.load(Ordering::SeqCst);
            match serve {
                Serve::NoDigestOnHead(_) => assert_eq!(fetched, BODY.len() as u64),
                _ => assert_eq!(fetched, 0, "the HEAD's digest is enough"),
            }
        }
    }

    #[tokio::test]
    async fn resolve_of_a_missing_tag_is_not_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        let remote = remote(&host);
        let err = remote.resolve("image I").await.unwrap_err();
        let err = remote.refused(err, "image I");
        assert!(matches!(&err, Error::NotFound(m) if m.contains("image I")), "{err:?}");
    }
}
