//! A man in the middle between tdc-milter and an intake that does offer STARTTLS:
//! it removes STARTTLS from the EHLO reply (the classic downgrade). The daemon must
//! not fall back to plaintext: the journal fails with a TLS error and no MAIL, RCPT
//! or message byte crosses the wire, neither to the proxy nor to the intake.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::daemon::{settings_yaml, Daemon};
use common::fake_intake::IntakeScript;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Everything the client (the daemon) sent through the proxy.
type Seen = Arc<Mutex<Vec<u8>>>;

/// A proxy to `upstream` that drops the STARTTLS line from every multi-line EHLO
/// reply, fixing up the last line's separator.
async fn stripping_proxy(upstream: SocketAddr) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let seen: Seen = Arc::default();
    let seen_by_proxy = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = seen_by_proxy.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (client_read, mut client_write) = client.into_split();
                let (server_read, mut server_write) = server.into_split();
                let to_server = tokio::spawn(async move {
                    let mut client_read = client_read;
                    let mut buf = [0u8; 4096];
                    loop {
                        match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if let Ok(mut s) = seen.lock() {
                                    s.extend_from_slice(&buf[..n]);
                                }
                                if server_write.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                let mut lines = BufReader::new(server_read);
                let mut reply: Vec<String> = Vec::new();
                loop {
                    let mut line = String::new();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let last = line.as_bytes().get(3) != Some(&b'-');
                    if !line
                        .to_ascii_uppercase()
                        .get(4..)
                        .unwrap_or("")
                        .starts_with("STARTTLS")
                    {
                        reply.push(line);
                    } else if last {
                        // STARTTLS was the last line: the one before becomes the last.
                        if let Some(prev) = reply.last_mut() {
                            prev.replace_range(3..4, " ");
                        }
                    }
                    if last {
                        let out: String = reply.drain(..).collect();
                        if client_write.write_all(out.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
                to_server.abort();
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn starttls_stripped_by_a_man_in_the_middle_is_a_tls_error_and_nothing_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let (proxy, seen) = stripping_proxy(intake.addr()).await;

    let daemon = Daemon::start(&settings_yaml(proxy, &ca, ""), dir.path()).await;
    daemon.journal("QMITM", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let lines = daemon.stop().await;

    common::assert_tls_error(&lines, "does not offer STARTTLS");

    // The proxy really was in the path (the daemon said EHLO through it) and saw no
    // envelope or content in the clear.
    let sent = String::from_utf8_lossy(&seen.lock().expect("lock").clone()).to_ascii_uppercase();
    assert!(sent.contains("EHLO"), "{sent}");
    for verb in ["MAIL FROM", "RCPT TO", "DATA", "STARTTLS"] {
        assert!(
            !sent.contains(verb),
            "{verb} went through the proxy: {sent}"
        );
    }
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}
