//! The gateway over TLS: REST over HTTP/1.1 and gRPC over HTTP/2 (chosen by ALPN) through the
//! same guards; plain HTTP, an untrusted certificate and a missing client certificate (mutual
//! TLS) refused at the handshake while the server goes on; a handshake that never ends dropped at
//! the header deadline; a renewed certificate served to new connections.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use palisade_gateway::keys::NewKey;
use palisade_gateway::tls::{TlsFiles, TlsServer, server_config};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The files of `server`'s certificate in `dir`, with `client_ca` as the CA of client
/// certificates if given.
fn files(dir: &Path, server: &Pki, client_ca: Option<&str>) -> TlsFiles {
    TlsFiles {
        cert: write(dir, "cert.pem", &server.cert),
        key: write(dir, "key.pem", &server.key),
        client_ca: client_ca.map(|ca| write(dir, "client-ca.pem", ca)),
    }
}

/// A TLS connection to `addr` as `localhost`, trusting `ca`, offering `alpn`, with `client`'s
/// certificate if given.
async fn connect(
    addr: SocketAddr,
    ca: &str,
    alpn: &[u8],
    client: Option<&Pki>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 sends the server's verdict on a client certificate after the handshake: a
    // refused one shows at the first read.
    tls.flush().await?;
    Ok(tls)
}

/// An HTTP/1.1 request over `tls`: (status, body).
async fn https1(
    tls: TlsStream<TcpStream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), hyper::Error> {
    use http_body_util::BodyExt as _;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap(),
        )
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

/// A one-route router served over `tls` with a header deadline of `header`: its address, its
/// connections, the sender that stops it, and its task.
async fn serve_plain_router(
    tls: Arc<TlsServer>,
    header: Duration,
) -> (
    SocketAddr,
    palisade_gateway::listen::Connections,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), palisade_gateway::GatewayError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let options = palisade_gateway::ServeOptions {
        header_read_timeout: header,
        ..Default::default()
    };
    let connections = palisade_gateway::listen::Connections::for_open_files();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(palisade_gateway::serve_tls_with(
        listener,
        router,
        async {
            let _ = rx.await;
        },
        options,
        connections.clone(),
        Some(tls),
    ));
    (addr, connections, tx, task)
}

/// `GET /v2/health/live` over HTTP/1.1 on a new TLS connection to `addr` (trusting `ca`, with
/// `client`'s certificate if given): its status, or `None` if the connection or the request
/// failed.
async fn live(addr: SocketAddr, ca: &str, client: Option<&Pki>) -> Option<u16> {
    let conn = connect(addr, ca, b"http/1.1", client).await.ok()?;
    let (status, _) = https1(conn, "GET", "/v2/health/live", &[], Vec::new())
        .await
        .ok()?;
    Some(status)
}

fn infer_body() -> Vec<u8> {
    json_infer(&[0.1, 0.2, 0.3, 0.4], 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_are_served_over_tls_and_what_cannot_be_trusted_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(&["localhost"]);
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, None)).unwrap());
    let s = start_tls(tls).await;
    let auth = bearer(&s.query);

    // REST over HTTP/1.1, through the guards: a key is still needed.
    let conn = connect(s.addr, &server.ca, b"http/1.1", None)
        .await
        .unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, body) = https1(conn, "POST", "/v2/models/lin/infer", &headers, infer_body())
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let conn = connect(s.addr, &server.ca, b"http/1.1", None)
        .await
        .unwrap();
    let (status, _) = https1(conn, "POST", "/v2/models/lin/infer", &[], infer_body())
        .await
        .unwrap();
    assert_eq!(status, 401);

    // gRPC over HTTP/2, as ALPN chose.
    let conn = connect(s.addr, &server.ca, b"h2", None).await.unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let body = http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&[])));
    let uri = "https://localhost/inference.GRPCInferenceService/ServerLive";
    let (code, message) = grpc_call_over(conn, uri, &[], body).await;
    assert_eq!(code, "0", "{message}");

    // Plain HTTP to the TLS port: no answer, the connection closed.
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    plain
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got))
        .await
        .expect("the plain connection was closed");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{got:?}");

    // A client that does not trust the certificate's CA does not get in.
    let (other, _) = pki(&["localhost"]);
    assert!(connect(s.addr, &other.ca, b"http/1.1", None).await.is_err());

    // And the server goes on.
    assert_eq!(live(s.addr, &server.ca, None).await, Some(200));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(&["localhost"]);
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, Some(&server.ca))).unwrap());
    let s = start_tls(tls).await;

    assert_eq!(live(s.addr, &server.ca, Some(&client)).await, Some(200));

    // Without a certificate, or with one of another CA: refused (TLS 1.3 says so after the
    // handshake, so the request fails if the handshake did not).
    let (_, stranger) = pki(&["localhost"]);
    for who in [None, Some(&stranger)] {
        let refused = live(s.addr, &server.ca, who).await.is_none();
        assert!(
            refused,
            "served a client with {:?}",
            who.map(|_| "another CA's certificate")
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_not_done_within_the_header_deadline_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(&["localhost"]);
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, None)).unwrap());
    let (addr, connections, tx, task) = serve_plain_router(tls, Duration::from_millis(300)).await;
    // Connected, and silent: the server closes the connection.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent connection was never closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // It no longer counts against the bound on connections.
    let t = std::time::Instant::now();
    while connections.open() != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "still counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// The failed handshakes `act` made the server count, by reason (each reason whose count rose,
/// and by how much), once at least one is counted: the server counts after the client is done.
async fn counted_while(
    connections: &palisade_gateway::listen::Connections,
    act: impl std::future::Future<Output = ()>,
) -> Vec<(palisade_gateway::listen::HandshakeFailure, u64)> {
    use palisade_gateway::listen::HandshakeFailure as F;
    let before = F::ALL.map(|f| connections.tls_failures(f));
    act.await;
    let rose = || -> Vec<(F, u64)> {
        F::ALL
            .iter()
            .zip(before)
            .map(|(f, was)| (*f, connections.tls_failures(*f) - was))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    let t = std::time::Instant::now();
    while rose().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "nothing counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rose()
}

/// Each handshake that does not complete is counted under its reason in
/// `palisade_tls_handshake_failures_total`, and one that completes under none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_handshake_is_counted_by_its_reason() {
    use palisade_gateway::listen::HandshakeFailure as F;
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(&["localhost"]);
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, Some(&server.ca))).unwrap());
    let (addr, connections, tx, task) = serve_plain_router(tls, Duration::from_millis(300)).await;
    let metrics = palisade_gateway::metrics::Metrics::new().unwrap();
    metrics.watch_connections(connections.clone());
    let render = metrics.render();
    for f in F::ALL {
        let line = format!(
            "palisade_tls_handshake_failures_total{{reason=\"{}\"}} 0",
            f.label()
        );
        assert!(render.contains(&line), "{line} not in\n{render}");
    }

    // A good client (answered, 404 by this one-route router): nothing counted.
    assert!(live(addr, &server.ca, Some(&client)).await.is_some());
    assert!(F::ALL.iter().all(|f| connections.tls_failures(*f) == 0));

    // Plain HTTP to the TLS port.
    let counted = counted_while(&connections, async {
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let _ = plain.read(&mut [0u8; 64]).await;
    });
    assert_eq!(counted.await, [(F::NotTls, 1)]);

    // A client that does not trust the server's CA says so with an alert.
    let (other, stranger) = pki(&["localhost"]);
    let counted = counted_while(&connections, async {
        let refused = connect(addr, &other.ca, b"http/1.1", Some(&client)).await;
        assert!(refused.is_err());
    });
    assert_eq!(counted.await, [(F::ClientAlert, 1)]);

    // Mutual TLS: no client certificate, then one of another CA.
    for who in [None, Some(&stranger)] {
        let counted = counted_while(&connections, async {
            assert_eq!(live(addr, &server.ca, who).await, None);
        });
        assert_eq!(counted.await, [(F::ClientCertificate, 1)]);
    }

    // Connected and closed at once (a TCP health check).
    let counted = counted_while(&connections, async {
        drop(TcpStream::connect(addr).await.unwrap());
    });
    assert_eq!(counted.await, [(F::Closed, 1)]);

    // Connected and silent past the header deadline.
    let counted = counted_while(&connections, async {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut [0u8; 16])).await;
    });
    assert_eq!(counted.await, [(F::Timeout, 1)]);

    let render = metrics.render();
    let line = "palisade_tls_handshake_failures_total{reason=\"client_certificate\"} 2";
    assert!(render.contains(line), "{line} not in\n{render}");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Bytes that are TLS but not a TLS handshake that can go on (a ClientHello cut short, a record
/// of application data before any handshake) are not "plain HTTP to the TLS port": they are
/// counted under `other` ("a malformed message", as `HandshakeFailure::Other` says), not under
/// `not_tls`, which an operator reads as clients speaking HTTP to the HTTPS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_tls_message_is_counted_as_other_not_as_not_tls() {
    use palisade_gateway::listen::HandshakeFailure as F;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(&["localhost"]);
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, None)).unwrap());
    let (addr, connections, tx, task) = serve_plain_router(tls, Duration::from_secs(5)).await;
    let sent = [
        // A handshake record holding a ClientHello of length 0.
        &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00][..],
        // An application data record before any handshake.
        &[0x17, 0x03, 0x03, 0x00, 0x01, 0x00][..],
    ];
    let mut counted_as = Vec::new();
    for bytes in sent {
        let counted = counted_while(&connections, async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(bytes).await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut [0u8; 64])).await;
        });
        counted_as.push((format!("{bytes:02x?}"), counted.await));
    }
    assert!(
        counted_as.iter().all(|(_, why)| why == &[(F::Other, 1)]),
        "{counted_as:?}"
    );
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = pki(&["localhost"]);
    let f = files(dir.path(), &old, None);
    let tls = Arc::new(TlsServer::load(f.clone()).unwrap());
    let s = start_tls(tls.clone()).await;
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed");
    let open = connect(s.addr, &old.ca, b"http/1.1", None).await.unwrap();

    // Renewed by another CA, the certificate written first: not loaded until its key is.
    let (new, _) = pki(&["localhost"]);
    std::fs::write(&f.cert, &new.cert).unwrap();
    assert!(tls.reload_if_changed().is_err());
    assert!(connect(s.addr, &old.ca, b"http/1.1", None).await.is_ok());
    std::fs::write(&f.key, &new.key).unwrap();
    assert!(tls.reload_if_changed().unwrap());
    assert!(connect(s.addr, &old.ca, b"http/1.1", None).await.is_err());
    assert_eq!(live(s.addr, &new.ca, None).await, Some(200));
    // A connection made before keeps its certificate.
    let (status, _) = https1(open, "GET", "/v2/health/live", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);

    // `watch` does the same on its own.
    let watcher = tokio::spawn(tls.clone().watch(Duration::from_millis(20)));
    let (newer, _) = pki(&["localhost"]);
    std::fs::write(&f.key, &newer.key).unwrap();
    std::fs::write(&f.cert, &newer.cert).unwrap();
    let t = std::time::Instant::now();
    while connect(s.addr, &newer.ca, b"http/1.1", None).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    s.stop().await;
}

#[test]
fn unusable_files_are_refused_saying_which_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(&["localhost"]);
    let cert = write(dir.path(), "c.pem", &server.cert);
    let key = write(dir.path(), "k.pem", &server.key);
    let err = |cert: &Path, key: &Path, ca: Option<PathBuf>| {
        server_config(&TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: ca,
        })
        .unwrap_err()
        .to_string()
    };
    let missing = dir.path().join("missing.pem");
    let e = err(&missing, &key, None);
    assert!(
        e.contains("cannot read") && e.contains("missing.pem"),
        "{e}"
    );
    let garbage = write(dir.path(), "g.pem", "not PEM at all");
    let e = err(&garbage, &key, None);
    assert!(e.contains("g.pem") && e.contains("no CERTIFICATE"), "{e}");
    let e = err(&cert, &cert, None);
    assert!(e.contains("k.pem") || e.contains("c.pem"), "{e}");
    assert!(e.contains("no usable private key"), "{e}");
    let wrong = write(dir.path(), "w.pem", &client.key);
    let e = err(&cert, &wrong, None);
    assert!(e.contains("refused"), "{e}");
    let e = err(&cert, &key, Some(garbage));
    assert!(e.contains("g.pem"), "{e}");
    // The good ones load, with ALPN for both protocols.
    let config = server_config(&TlsFiles {
        cert,
        key,
        client_ca: Some(write(dir.path(), "ca.pem", &server.ca)),
    })
    .unwrap();
    assert_eq!(config.alpn_protocols, [&b"h2"[..], b"http/1.1"]);
}

// ---- review (33): defects found in 9fea0f6 ----

/// A client config trusting `ca`, offering `alpn`.
fn client_config(ca: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A TLS connection must bring its first request within the header deadline of its arrival,
/// handshake included: the deadline for the first request began when the handshake ended, so a
/// client that handshook late and then stayed silent held its connection for up to twice the
/// header deadline (review, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_must_bring_its_first_request_within_the_header_deadline_of_its_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(&["localhost"]);
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, None)).unwrap());
    let (addr, _, tx, task) = serve_plain_router(tls, Duration::from_millis(1000)).await;
    let t = std::time::Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The handshake late but within the header deadline; then nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(client_config(&server.ca, b"http/1.1"))
        .connect(name, tcp)
        .await
        .expect("the handshake, within the header deadline, succeeds");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "never closed");
    let held = t.elapsed();
    assert!(
        held < Duration::from_millis(1500),
        "a silent TLS connection was held {held:?} with a header deadline of 1 s"
    );
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// A key that does not belong to the certificate is refused naming the files: rustls's error
/// named neither (review, 2026-12-06).
#[test]
fn a_key_not_matching_its_certificate_is_refused_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = pki(&["localhost"]);
    let e = server_config(&TlsFiles {
        cert: write(dir.path(), "served-cert.pem", &server.cert),
        key: write(dir.path(), "other-key.pem", &client.key),
        client_ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("other-key.pem") || e.contains("served-cert.pem"),
        "names no file: {e}"
    );
}

/// The same for a CERTIFICATE block that holds no certificate (a truncated or corrupted file):
/// the PEM parses, and rustls then fails to parse the DER.
#[test]
fn a_certificate_block_that_is_not_a_certificate_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(&["localhost"]);
    let e = server_config(&TlsFiles {
        cert: write(
            dir.path(),
            "broken-cert.pem",
            "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
        ),
        key: write(dir.path(), "k.pem", &server.key),
        client_ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("broken-cert.pem"), "names no file: {e}");
}

/// A key of `s` that may query the linear model, bound to `cert`.
fn bound_key(s: &Server, cert: palisade_gateway::keys::ClientCertificate) -> NewKey {
    bound_as(s, palisade_gateway::keys::ClientBinding::Certificate(cert))
}

/// A key of `s` that may query the linear model, bound as `binding` says.
fn bound_as(s: &Server, binding: palisade_gateway::keys::ClientBinding) -> NewKey {
    use palisade_gateway::keys::{KeyStore as _, Role};
    let lin = [Role::Query("lin".into())];
    s.state
        .keys
        .create_bound("bound", &lin, None, Some(binding), now_ms())
        .unwrap()
}

/// An infer of the linear model with `key` over HTTP/1.1 on a new TLS connection to `addr`
/// (trusting `ca`, with `client`'s certificate if given): its status and body.
async fn infer_tls(
    addr: SocketAddr,
    ca: &str,
    client: Option<&Pki>,
    key: &NewKey,
) -> (u16, String) {
    let conn = connect(addr, ca, b"http/1.1", client).await.unwrap();
    let auth = bearer(key);
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, body) = https1(conn, "POST", "/v2/models/lin/infer", &headers, infer_body())
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A `ModelInfer` call to the linear model over gRPC on a new TLS connection to `addr`
/// (trusting `ca`, with `client`'s certificate), with `auth`: its `grpc-status` and
/// `grpc-message`.
async fn grpc_infer(addr: SocketAddr, ca: &str, client: &Pki, auth: &str) -> (String, String) {
    let conn = connect(addr, ca, b"h2", Some(client)).await.unwrap();
    let body = http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&lin_infer_message("lin"))));
    let uri = "https://localhost/inference.GRPCInferenceService/ModelInfer";
    grpc_call_over(conn, uri, &[("authorization", auth)], body).await
}

/// An admin API `POST` of `body` to `path` on `s`, with its admin key and the TOTP code of
/// `step` (codes are taken once each), over HTTP/1.1 on a new TLS connection with `client`'s
/// certificate: the status and the JSON answer.
async fn admin_post(
    s: &Server,
    ca: &str,
    client: &Pki,
    path: &str,
    body: serde_json::Value,
    step: i64,
) -> (u16, serde_json::Value) {
    let conn = connect(s.addr, ca, b"http/1.1", Some(client))
        .await
        .unwrap();
    let admin = bearer(&s.admin);
    let code = totp_now(&s.admin, step);
    let headers = [
        ("authorization", admin.as_str()),
        ("x-palisade-totp", code.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, body) = https1(conn, "POST", path, &headers, body.to_string().into_bytes())
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// A key bound to a client certificate (RFC 8705's certificate-bound tokens) is served over
/// REST and gRPC only on a connection that presented that certificate: another certificate of
/// the same CA gets 401 / `UNAUTHENTICATED` naming why, and the refusal is audited under the
/// key. An unbound key is served whichever certificate the connection presented; a rotation
/// keeps the binding, or moves it to a renewed certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_to_a_client_certificate_is_served_only_with_that_certificate() {
    use palisade_gateway::audit::AuditLog as _;
    use palisade_gateway::keys::{ClientCertificate, KeyStore as _};
    let dir = tempfile::tempdir().unwrap();
    let (server, clients) = pki_with_clients(&["localhost"], &["alice", "bob", "alice-renewed"]);
    let [alice, bob, renewed] = &clients[..] else {
        unreachable!()
    };
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, Some(&server.ca))).unwrap());
    let s = start_tls(tls).await;
    let thumb = |p: &Pki| ClientCertificate::from_pem(p.cert.as_bytes()).unwrap();
    let bound = bound_key(&s, thumb(alice));
    assert_eq!(bound.record.client_cert, Some(thumb(alice)));
    let infer = async |who: &Pki, key: &NewKey| infer_tls(s.addr, &server.ca, Some(who), key).await;

    let (status, body) = infer(alice, &bound).await;
    assert_eq!(status, 200, "{body}");
    let before = s.state.audit.size().unwrap();
    let (status, body) = infer(bob, &bound).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bound to a client certificate"), "{body}");
    let entry = s.audit_entries(before).pop().unwrap();
    assert_eq!(entry["decision"], "denied:authenticate", "{entry}");
    assert_eq!(entry["key_id"], bound.record.id.as_str(), "{entry}");

    // gRPC: refused before the message is read, with the same words.
    let (code, _) = grpc_infer(s.addr, &server.ca, alice, &bearer(&bound)).await;
    assert_eq!(code, "0");
    let (code, message) = grpc_infer(s.addr, &server.ca, bob, &bearer(&bound)).await;
    assert_eq!(code, "16", "{message}");
    assert!(
        message.contains("bound to a client certificate"),
        "{message}"
    );

    // An unbound key: any certificate the CA vouches for.
    for who in [alice, bob] {
        assert_eq!(infer(who, &s.query).await.0, 200);
    }

    // Rotated, the successor keeps the binding; rotated to a renewed certificate, it moves, and
    // the old key still works with the old certificate during the overlap.
    let kept = s
        .state
        .keys
        .rotate(&bound.record.id, Duration::from_secs(60), now_ms())
        .unwrap();
    assert_eq!(kept.record.client_cert, Some(thumb(alice)));
    assert_eq!(infer(bob, &kept).await.0, 401);
    let moved = s
        .state
        .keys
        .rotate_rebinding(
            &kept.record.id,
            Duration::from_secs(60),
            Some(palisade_gateway::keys::ClientBinding::Certificate(thumb(
                renewed,
            ))),
            now_ms(),
        )
        .unwrap();
    assert_eq!(infer(renewed, &moved).await.0, 200);
    assert_eq!(infer(alice, &moved).await.0, 401);
    assert_eq!(infer(alice, &kept).await.0, 200);
    // Listed with its thumbprint.
    let listed = s.state.keys.find(&moved.record.id).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&listed).unwrap()["client_cert_sha256"],
        thumb(renewed).to_string()
    );
    s.stop().await;
}

/// A key bound to a name (a SPIFFE ID, in the client certificate's URI SAN) is served over
/// REST and gRPC with every certificate the client CA issued with that name: a renewal (a new
/// key pair, so another thumbprint) needs no rotation. A certificate with another name is
/// refused. The admin API binds by name too (`client_san`), and refuses a name
/// that is not one, and both bindings at once, making no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_to_a_name_is_served_with_every_certificate_that_carries_it() {
    use palisade_gateway::keys::{ClientBinding, ClientCertificate, KeyStore as _};
    let dir = tempfile::tempdir().unwrap();
    let scorer = "spiffe://palisade.test/ns/prod/sa/scorer";
    let (server, clients) = pki_with_clients(
        &["localhost"],
        &[
            scorer,
            scorer,
            "spiffe://palisade.test/ns/prod/sa/mallory",
            "scorer.palisade.test",
        ],
    );
    let [first, renewed, mallory, dns] = &clients[..] else {
        unreachable!()
    };
    let tls = Arc::new(TlsServer::load(files(dir.path(), &server, Some(&server.ca))).unwrap());
    let s = start_tls(tls).await;
    let name = format!("uri:{scorer}");
    let bound = bound_as(&s, ClientBinding::Name(name.parse().unwrap()));
    let thumb = |p: &Pki| ClientCertificate::from_pem(p.cert.as_bytes()).unwrap();
    assert_ne!(thumb(first), thumb(renewed));
    for who in [first, renewed] {
        let (status, body) = infer_tls(s.addr, &server.ca, Some(who), &bound).await;
        assert_eq!(status, 200, "{body}");
    }
    // (A connection without a certificate gets no handshake here: `--tls-client-ca` asks for
    // one. `a_bound_key_is_refused_where_no_client_certificate_was_presented` is that case.)
    for who in [mallory, dns] {
        let (status, body) = infer_tls(s.addr, &server.ca, Some(who), &bound).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("bound to a client certificate"), "{body}");
    }
    let (code, _) = grpc_infer(s.addr, &server.ca, renewed, &bearer(&bound)).await;
    assert_eq!(code, "0");
    let (code, message) = grpc_infer(s.addr, &server.ca, mallory, &bearer(&bound)).await;
    assert_eq!(code, "16", "{message}");

    let call = async |body: serde_json::Value, step: i64| {
        admin_post(&s, &server.ca, first, "/v2/admin/keys", body, step).await
    };
    let keys_before = s.state.keys.list().unwrap().len();
    for (step, body, says) in [
        (
            -1,
            serde_json::json!({"name": "x", "roles": ["query:lin"], "client_san": "uri:nope"}),
            "not a URI",
        ),
        (
            0,
            serde_json::json!({"name": "x", "roles": ["query:lin"], "client_san": name,
                               "client_cert_sha256": thumb(first).to_string()}),
            "not both",
        ),
    ] {
        let (status, answer) = call(body, step).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    assert_eq!(s.state.keys.list().unwrap().len(), keys_before);
    let (status, answer) = call(
        serde_json::json!({"name": "x", "roles": ["query:lin"], "client_san": name}),
        1,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["record"]["client_san"], name.as_str());
    s.stop().await;
}

/// A bound key on a connection without TLS, or with TLS but no client certificate, is refused:
/// "no certificate" is not a match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_key_is_refused_where_no_client_certificate_was_presented() {
    use palisade_gateway::keys::ClientCertificate;
    let (_, client) = pki(&["localhost"]);
    let thumb = ClientCertificate::from_pem(client.cert.as_bytes()).unwrap();
    let s = start().await;
    let bound = bound_key(&s, thumb);
    let infer = async |key: &NewKey| {
        let auth = bearer(key);
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        request(
            s.addr,
            "POST",
            "/v2/models/lin/infer",
            &headers,
            &infer_body(),
        )
        .await
    };
    let r = infer(&bound).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(infer(&s.query).await.status, 200);
    s.stop().await;

    // TLS without client certificates: the connection presents none.
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(&["localhost"]);
    let s = start_tls(Arc::new(
        TlsServer::load(files(dir.path(), &server, None)).unwrap(),
    ))
    .await;
    let bound = bound_key(&s, thumb);
    for (key, expected) in [(&bound, 401), (&s.query, 200)] {
        assert_eq!(infer_tls(s.addr, &server.ca, None, key).await.0, expected);
    }
    s.stop().await;
}

/// The admin API binds a key at creation (`client_cert_sha256`) and moves the binding at
/// rotation; a thumbprint that is not one is a 400 saying so, and makes no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_binds_keys_and_refuses_a_thumbprint_that_is_not_one() {
    use palisade_gateway::keys::{ClientCertificate, KeyStore as _};
    let dir = tempfile::tempdir().unwrap();
    let (server, clients) = pki_with_clients(&["localhost"], &["alice", "alice-renewed"]);
    let [alice, renewed] = &clients[..] else {
        unreachable!()
    };
    let s = start_tls(Arc::new(
        TlsServer::load(files(dir.path(), &server, Some(&server.ca))).unwrap(),
    ))
    .await;
    let thumb = |p: &Pki| ClientCertificate::from_pem(p.cert.as_bytes()).unwrap();
    let call = async |path: &str, body: serde_json::Value, step: i64| {
        admin_post(&s, &server.ca, alice, path, body, step).await
    };
    let keys_before = s.state.keys.list().unwrap().len();
    let (status, body) = call(
        "/v2/admin/keys",
        serde_json::json!({"name": "x", "roles": ["query:lin"], "client_cert_sha256": "abc"}),
        -1,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("thumbprint"),
        "{body}"
    );
    assert_eq!(s.state.keys.list().unwrap().len(), keys_before);

    // As `openssl x509 -fingerprint -sha256` prints it.
    let colons = thumb(alice)
        .to_string()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let (status, body) = call(
        "/v2/admin/keys",
        serde_json::json!({"name": "x", "roles": ["query:lin"], "client_cert_sha256": colons}),
        0,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["record"]["client_cert_sha256"],
        thumb(alice).to_string()
    );
    let id = body["record"]["id"].as_str().unwrap().to_string();
    let (status, body) = call(
        &format!("/v2/admin/keys/{id}/rotate"),
        serde_json::json!({"overlap_s": 60, "client_cert_sha256": thumb(renewed).to_string()}),
        1,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let successor = body["record"]["id"].as_str().unwrap();
    assert_eq!(
        s.state.keys.find(successor).unwrap().unwrap().client_cert,
        Some(thumb(renewed))
    );
    s.stop().await;
}
