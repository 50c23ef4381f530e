//! Pulls from registries behind a login, end to end: Debian's real
//! `docker-registry` with distribution's `htpasswd` (basic auth) and `token`
//! schemes, the latter with a token server in this process as its realm.
//!
//! Server-side pulls (`corten images pull`) send credentials through the
//! Transfer service's auth stream: from `--user`, from a docker
//! `config.json` (`--docker-config` or `$DOCKER_CONFIG`). The registry
//! client in the daemon does the challenge and, for tokens, the whole token
//! dance. Client-side pulls (`ctr images pull --user`) do their own auth,
//! and only write through corten's content, snapshot and image services.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use corten_tests::{
    bin, ok,
    registry::{self, AuthScheme, PushedImage, Registry},
    Daemon,
};

const USER: &str = "corten-user";
/// A colon (user:password splits at the first), a space and the characters
/// a form encodes, so every place that carries it is exercised.
const PASSWORD: &str = "s3cret:pass word+100%";
const REPOSITORY: &str = "private/busybox";

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A registry behind `scheme` with the busybox image in [`REPOSITORY`].
fn private_registry(scheme: AuthScheme) -> (Registry, PushedImage) {
    let registry = Registry::start_with_auth(scheme, USER, PASSWORD);
    let image = registry.push_busybox(REPOSITORY, "v1");
    (registry, image)
}

/// `corten -n NS images pull ARGS` with `$DOCKER_CONFIG` at `docker_dir`
/// (so no config.json of this machine's user is read) and `stdin` as its
/// standard input.
fn corten_pull(d: &Daemon, docker_dir: &Path, ns: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin("corten"))
        .arg("--address")
        .arg(&d.socket)
        .args(["--namespace", ns, "images", "pull", "--plain-http"])
        .args(args)
        .env("DOCKER_CONFIG", docker_dir)
        .env_remove("CONTAINERD_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corten");
    let mut input = child.stdin.take().expect("corten stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write corten's stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait for corten")
}

fn pulled(d: &Daemon, out: Output) -> String {
    assert!(
        out.status.success(),
        "pull failed: {}\ncortend log:\n{}",
        text(&out),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(d: &Daemon, out: Output) -> String {
    assert!(
        !out.status.success(),
        "pull succeeded: {}\ncortend log:\n{}",
        text(&out),
        d.log()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ctr_ns(d: &Daemon, ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["--namespace", ns];
    all.extend_from_slice(args);
    d.ctr(&all)
}

/// `ctr images check` in `ns` says the image is complete and unpacked.
fn assert_complete(d: &Daemon, ns: &str, reference: &str) {
    let check = ok(ctr_ns(d, ns, &["images", "check"]));
    let row = check
        .lines()
        .skip(1)
        .find(|l| l.starts_with(reference))
        .unwrap_or_else(|| panic!("{reference} not checked in {ns}:\n{check}"));
    assert!(row.contains("complete ("), "{check}");
    assert!(row.trim_end().ends_with("true"), "not unpacked:\n{check}");
}

/// After a refused pull: no image and no lease in `ns`.
fn assert_nothing_left(d: &Daemon, ns: &str) {
    let images = ok(ctr_ns(d, ns, &["images", "ls", "-q"]));
    assert_eq!(images.trim(), "", "an image was recorded in {ns}");
    let leases = ok(ctr_ns(d, ns, &["leases", "ls", "-q"]));
    assert_eq!(leases.trim(), "", "a lease was left in {ns}");
}

/// A refusal for want of (right) credentials: unauthorized, naming the
/// image and its registry, never the password.
fn assert_unauthorized(err: &str, registry: &Registry, image: &PushedImage) {
    assert!(err.contains("unauthorized"), "{err}");
    assert!(err.contains(&format!("image {}", image.reference)), "{err}");
    assert!(err.contains(&format!("registry {}", registry.host())), "{err}");
    assert!(!err.contains(PASSWORD), "the password is in the error: {err}");
    assert!(err.contains("(FailedPrecondition)"), "{err}");
}

fn server_side_pulls(scheme: AuthScheme) {
    let (registry, image) = private_registry(scheme);
    let d = Daemon::start();
    let docker = tempfile::tempdir().unwrap();
    let empty = docker.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let reference = image.reference.as_str();

    // No credentials at all.
    let err = refused(&d, corten_pull(&d, &empty, "anonymous", &[reference], None));
    assert_unauthorized(&err, &registry, &image);
    assert!(err.contains("--user") && err.contains("config.json"), "{err}");
    assert_nothing_left(&d, "anonymous");

    // The wrong password: refused, naming the user, and nothing left.
    let wrong = format!("{USER}:not-{PASSWORD}");
    let err = refused(
        &d,
        corten_pull(&d, &empty, "default", &["--user", &wrong, reference], None),
    );
    assert_unauthorized(&err, &registry, &image);
    assert!(err.contains(USER), "{err}");
    assert!(!err.contains(&wrong), "{err}");
    assert_nothing_left(&d, "default");

    // The right one, in the same namespace, right after.
    let right = format!("{USER}:{PASSWORD}");
    let out = pulled(
        &d,
        corten_pull(&d, &empty, "default", &["--user", &right, reference], None),
    );
    assert!(out.starts_with(reference), "{out}");
    assert!(out.contains(&image.manifest_digest), "{out}");
    assert_complete(&d, "default", reference);
    assert_eq!(ok(ctr_ns(&d, "default", &["leases", "ls", "-q"])).trim(), "");

    // The user with the password on stdin, as `docker login --password-stdin`.
    let out = corten_pull(
        &d,
        &empty,
        "stdin",
        &["--user", USER, reference],
        Some(&format!("{PASSWORD}\n")),
    );
    pulled(&d, out);
    assert_complete(&d, "stdin", reference);

    // A docker config.json given with --docker-config.
    let config = docker.path().join("auth.json");
    std::fs::write(&config, registry::docker_config_json(&registry.host(), USER, PASSWORD)).unwrap();
    let flag = config.to_str().unwrap();
    pulled(
        &d,
        corten_pull(&d, &empty, "config", &["--docker-config", flag, reference], None),
    );
    assert_complete(&d, "config", reference);

    // The default config.json, found through $DOCKER_CONFIG.
    let home = docker.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(
        home.join("config.json"),
        registry::docker_config_json(&registry.host(), USER, PASSWORD),
    )
    .unwrap();
    pulled(&d, corten_pull(&d, &home, "envconfig", &[reference], None));
    assert_complete(&d, "envconfig", reference);

    // A config whose credentials are for another registry: unauthorized.
    let other = docker.path().join("other.json");
    std::fs::write(&other, registry::docker_config_json("127.0.0.1:1", USER, PASSWORD)).unwrap();
    let flag = other.to_str().unwrap();
    let err = refused(
        &d,
        corten_pull(&d, &empty, "other", &["--docker-config", flag, reference], None),
    );
    assert_unauthorized(&err, &registry, &image);
    assert_nothing_left(&d, "other");

    // A config whose credentials for this registry are wrong.
    let bad = docker.path().join("bad.json");
    std::fs::write(&bad, registry::docker_config_json(&registry.host(), USER, "wrong")).unwrap();
    let flag = bad.to_str().unwrap();
    let err = refused(
        &d,
        corten_pull(&d, &empty, "bad", &["--docker-config", flag, reference], None),
    );
    assert_unauthorized(&err, &registry, &image);
    assert!(err.contains(USER), "{err}");
    assert_nothing_left(&d, "bad");

    if let Some(tokens) = registry.token_server() {
        // The daemon's client did the token dance: the realm saw the user's
        // basic credentials and granted a pull of the repository.
        let requests = tokens.requests();
        let scope = format!("repository:{REPOSITORY}:pull");
        assert!(
            requests
                .iter()
                .any(|r| r.granted && r.user.as_deref() == Some(USER) && r.scopes.contains(&scope)),
            "{requests:?}"
        );
        // And the wrong password was refused there.
        assert!(
            requests.iter().any(|r| !r.granted && r.user.as_deref() == Some(USER)),
            "{requests:?}"
        );
    }
}

#[test]
fn basic_auth_server_side() {
    server_side_pulls(AuthScheme::Basic);
}

#[test]
fn token_auth_server_side() {
    server_side_pulls(AuthScheme::Token);
}

/// containerd's own client-side pull with credentials: ctr does the auth,
/// corten only stores what it writes.
fn client_side_pull(scheme: AuthScheme) {
    let (registry, image) = private_registry(scheme);
    let d = Daemon::start();
    let reference = image.reference.as_str();

    let out = d.ctr(&["images", "pull", "--plain-http", reference]);
    assert!(!out.status.success(), "ctr pulled without credentials: {}", text(&out));
    assert_nothing_left(&d, "default");

    let user = format!("{USER}:{PASSWORD}");
    let out = d.ctr(&["images", "pull", "--plain-http", "--user", &user, reference]);
    assert!(out.status.success(), "ctr images pull: {}\n{}", text(&out), d.log());
    assert_complete(&d, "default", reference);

    if let Some(tokens) = registry.token_server() {
        let requests = tokens.requests();
        assert!(
            requests.iter().any(|r| r.granted && r.user.as_deref() == Some(USER)),
            "{requests:?}"
        );
    }
}

#[test]
fn basic_auth_client_side_ctr() {
    client_side_pull(AuthScheme::Basic);
}

#[test]
fn token_auth_client_side_ctr() {
    client_side_pull(AuthScheme::Token);
}

/// An index naming a manifest larger than any a pull accepts (16 MiB):
/// refused from its descriptor, before the registry is asked for it, with
/// nothing recorded. (A registry that sends a larger manifest than it
/// announces, or announces too much, is the images plugin's unit tests'
/// business: distribution 2.8 neither stores nor serves a manifest over
/// 4 MiB.)
#[test]
fn oversized_manifest_in_an_index_is_refused_before_it_is_fetched() {
    let (registry, image) = private_registry(AuthScheme::Token);
    let manifest = registry.get(&format!("/v2/{REPOSITORY}/manifests/v1"), registry::OCI_MANIFEST);
    assert_eq!(manifest.status, 200);
    let mut index: serde_json::Value =
        serde_json::from_slice(&registry::index_json(&[(&manifest.body, "linux", "amd64")])).unwrap();
    let claimed = 17u64 << 20;
    index["manifests"][0]["size"] = claimed.into();
    let body = serde_json::to_vec(&index).unwrap();
    registry.push_manifest(REPOSITORY, "index", registry::OCI_INDEX, &body);
    let reference = format!("{}/{REPOSITORY}:index", registry.host());

    let d = Daemon::start();
    let docker = tempfile::tempdir().unwrap();
    let user = format!("{USER}:{PASSWORD}");
    let err = refused(
        &d,
        corten_pull(&d, docker.path(), "default", &["--user", &user, &reference], None),
    );
    assert!(
        err.contains(&image.manifest_digest)
            && err.contains(&format!("says {claimed} bytes"))
            && err.contains("more than the 16777216"),
        "{err}"
    );
    assert!(err.contains("(InvalidArgument)"), "{err}");
    assert_nothing_left(&d, "default");

    // The image it names still pulls.
    pulled(
        &d,
        corten_pull(&d, docker.path(), "default", &["--user", &user, &image.reference], None),
    );
    assert_complete(&d, "default", &image.reference);
}
