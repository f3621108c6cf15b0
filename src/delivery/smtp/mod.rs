//! Our SMTP client: one session to the intake, STARTTLS required, every failure tagged
//! with its stage (docs/ARCHITECTURE.md says why we own this state machine).
//!
//! Replies are parsed with smtp-proto; the session keeps one buffered reader for its
//! whole life so pipelined replies are never lost.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;

use super::error::{DeliveryError, Kind, Reply, Stage, TlsFailure, TlsProblem};
use super::route::Target;
use super::tls;
use crate::tdclog::{Event, Log};

mod dot_stuff;
mod wire;

pub use dot_stuff::dot_stuff;
use wire::{io_kind, positive, Wire};
pub use wire::{read_replies, Capabilities};

/// Per-stage time limits; each is also capped by the journal's lifetime.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data_block: Duration,
    /// The reply to the final dot gets at least this long, even past the lifetime
    /// (docs/DELIVERY.md, "Decisions of our own"): giving up early risks a duplicate at the intake.
    pub final_reply_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(60),
            data_block: Duration::from_secs(120),
            final_reply_grace: Duration::from_secs(10),
        }
    }
}

/// Runs `fut` for at most `limit`, and never past `deadline`.
async fn staged<T>(
    stage: Stage,
    limit: Duration,
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, Kind>>,
) -> Result<T, DeliveryError> {
    let until = deadline.min(Instant::now() + limit);
    match timeout_at(until, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kind)) => Err(DeliveryError::new(stage, kind)),
        Err(_) => Err(DeliveryError::new(stage, Kind::Timeout)),
    }
}

/// Fails the stage unless the reply is positive (2xx, or the given intermediate code).
fn expect(stage: Stage, reply: Reply, ok: impl Fn(u16) -> bool) -> Result<Reply, DeliveryError> {
    if ok(reply.code) {
        Ok(reply)
    } else {
        Err(DeliveryError::new(stage, Kind::Reply(reply)))
    }
}

/// An open session with the intake, ready for MAIL FROM. In the daemon its stream is
/// always TLS over TCP (the dialer opens no other); the transactions work on any
/// stream, so tests can run them over an in-memory pipe.
pub struct Session<S = TlsStream<TcpStream>> {
    wire: Wire<S>,
    caps: Capabilities,
    /// Negotiated TLS version and cipher, as logged.
    pub tls_protocol: String,
    pub tls_cipher: String,
    timeouts: Timeouts,
    pub dcid: u64,
    pub local: Option<IpAddr>,
}

/// A session that could not be opened, and our side's address if TCP got that far.
#[derive(Debug)]
pub struct OpenError {
    pub error: DeliveryError,
    pub local: Option<IpAddr>,
}

/// What every session to the intake is opened with.
pub struct Dialer<'a> {
    pub helo_name: &'a str,
    pub tls: &'a super::tls::TlsClient,
    pub timeouts: Timeouts,
    pub log: &'a Log,
}

impl Dialer<'_> {
    /// Connects, reads the greeting, EHLO, STARTTLS (required), handshake, EHLO again.
    pub async fn open(
        &self,
        target: &Target,
        dcid: u64,
        deadline: Instant,
    ) -> Result<Session, OpenError> {
        let tcp = staged(Stage::Connect, self.timeouts.connect, deadline, async {
            TcpStream::connect(target.address).await.map_err(io_kind)
        })
        .await
        .map_err(|error| OpenError {
            error,
            local: route_source(target.address),
        })?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok().map(|a| a.ip());
        self.establish(tcp, local, target, dcid, deadline)
            .await
            .map_err(|error| OpenError { error, local })
    }

    /// Greeting, EHLO, STARTTLS, handshake and EHLO again over `tcp`, a connected
    /// stream (TCP in the daemon).
    async fn establish<P: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: P,
        local: Option<IpAddr>,
        target: &Target,
        dcid: u64,
        deadline: Instant,
    ) -> Result<Session<TlsStream<P>>, DeliveryError> {
        let Dialer {
            helo_name,
            tls: tls_client,
            timeouts,
            log,
        } = *self;
        if let Some(interface) = local {
            log.event(Event::NewConnection {
                dcid,
                interface,
                address: target.address.ip(),
                port: target.address.port(),
            });
        }

        let mut plain = Wire::new(tcp);
        let greeting = staged(
            Stage::Greeting,
            timeouts.command,
            deadline,
            plain.read_reply(),
        )
        .await?;
        expect(Stage::Greeting, greeting, |c| c == 220)?;

        let ehlo = format!("EHLO {helo_name}\r\n");
        let caps = staged(Stage::Ehlo, timeouts.command, deadline, plain.ehlo(&ehlo)).await?;
        if !caps.starttls {
            return Err(DeliveryError::new(
                Stage::Ehlo,
                Kind::TlsUnavailable("the server does not offer STARTTLS".into()),
            ));
        }

        let reply = staged(Stage::StartTls, timeouts.command, deadline, async {
            plain.write(b"STARTTLS\r\n").await?;
            plain.read_reply().await
        })
        .await?;
        expect(Stage::StartTls, reply, |c| c == 220)?;
        // Bytes that arrived after the 220 were sent before encryption: accepting them
        // would let a man in the middle inject commands into the TLS session.
        if !plain.io.buffer().is_empty() {
            return Err(DeliveryError::new(
                Stage::StartTls,
                Kind::Tls(TlsFailure::other("plaintext data after the STARTTLS reply")),
            ));
        }
        let tcp = plain.io.into_inner();

        let Some(name) = tls::server_name(&target.tls_name) else {
            return Err(DeliveryError::new(
                Stage::TlsHandshake,
                Kind::Tls(TlsFailure::other(format!(
                    "'{}' is not a valid TLS server name",
                    target.tls_name
                ))),
            ));
        };
        let connector = tls_client.connector(&target.nexthop, &target.tls_name);
        let stream = staged(Stage::TlsHandshake, timeouts.command, deadline, async {
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| Kind::Tls(handshake_error(&e)))
        })
        .await?;
        let (_, conn) = stream.get_ref();
        let protocol = tls::protocol_name(conn.protocol_version());
        let cipher = tls::cipher_name(conn.negotiated_cipher_suite().map(|s| s.suite()));
        log.event(Event::TlsSuccess {
            dcid,
            protocol: &protocol,
            cipher: &cipher,
        });

        let mut wire = Wire::new(stream);
        let caps = staged(Stage::TlsEhlo, timeouts.command, deadline, wire.ehlo(&ehlo)).await?;

        Ok(Session {
            wire,
            caps,
            tls_protocol: protocol,
            tls_cipher: cipher,
            timeouts,
            dcid,
            local,
        })
    }
}

/// The address our side would use towards `peer`, for a connection that never got
/// established (the log names the interface, as the appliance does). Connecting a UDP
/// socket only asks the kernel for a route; nothing is sent.
fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// A handshake failure in words: the rustls error when there is one, EOF otherwise.
fn handshake_error(e: &std::io::Error) -> TlsFailure {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        if let Some(ours) = super::cert_match::not_the_intake(inner) {
            return TlsFailure::new(
                TlsProblem::NotTheIntake,
                format!("invalid peer certificate: {ours}"),
            );
        }
        return TlsFailure::new(tls_problem(inner), inner.to_string());
    }
    match e.kind() {
        // What a server that speaks only TLS 1.0 or 1.1 does to our hello (OpenSSL
        // without an alert): worth naming, as it is the likeliest cause.
        std::io::ErrorKind::UnexpectedEof => TlsFailure::other(
            "connection closed during the TLS handshake (does the server support TLS 1.2 or later?)",
        ),
        _ => TlsFailure::other(e.to_string()),
    }
}

/// What a rustls error says about the certificate, if anything.
fn tls_problem(e: &rustls::Error) -> TlsProblem {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = e else {
        return TlsProblem::Other;
    };
    match cert {
        C::UnknownIssuer | C::BadSignature => TlsProblem::UntrustedIssuer,
        C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongName,
        C::Expired | C::ExpiredContext { .. } => TlsProblem::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::NotValidYet,
        _ => TlsProblem::Other,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// One transaction: MAIL FROM, RCPT TO (exactly one intake), DATA, the dot-stuffed
    /// message. MAIL/RCPT/DATA go in one write when the server offers PIPELINING.
    pub async fn send(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
        eight_bit: bool,
        deadline: Instant,
    ) -> Result<Reply, DeliveryError> {
        if eight_bit && !self.caps.eight_bit_mime {
            return Err(DeliveryError::new(Stage::Mail, Kind::No8BitMime));
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        mail.push_str("\r\n");
        let rcpt = format!("RCPT TO:<{to}>\r\n");
        let t = self.timeouts;

        if self.caps.pipelining {
            let batch = format!("{mail}{rcpt}DATA\r\n");
            let wire = &mut self.wire;
            staged(
                Stage::Mail,
                t.command,
                deadline,
                wire.write(batch.as_bytes()),
            )
            .await?;
            // Each reply is read under its own stage, so a timeout names the command
            // the server left unanswered.
            // A server that refuses and hangs up (421) fails the later reads: the
            // earlier refusal is the real reason then.
            let mail_r = staged(Stage::Mail, t.command, deadline, wire.read_reply()).await?;
            let rcpt_r = match staged(Stage::Rcpt, t.command, deadline, wire.read_reply()).await {
                Ok(r) => r,
                Err(e) => {
                    expect(Stage::Mail, mail_r, positive)?;
                    return Err(e);
                }
            };
            let data_r = match staged(Stage::Data, t.command, deadline, wire.read_reply()).await {
                Ok(r) => r,
                Err(e) => {
                    expect(Stage::Mail, mail_r, positive)?;
                    expect(Stage::Rcpt, rcpt_r, positive)?;
                    return Err(e);
                }
            };
            // Decide in protocol order: a 503 to DATA after a refused RCPT is the
            // RCPT's failure, not a DATA one (docs/DELIVERY.md, "The retry table").
            expect(Stage::Mail, mail_r, positive)?;
            expect(Stage::Rcpt, rcpt_r, positive)?;
            expect(Stage::Data, data_r, |c| c == 354)?;
        } else {
            let wire = &mut self.wire;
            let r = staged(Stage::Mail, t.command, deadline, async {
                wire.write(mail.as_bytes()).await?;
                wire.read_reply().await
            })
            .await?;
            expect(Stage::Mail, r, positive)?;
            let r = staged(Stage::Rcpt, t.command, deadline, async {
                wire.write(rcpt.as_bytes()).await?;
                wire.read_reply().await
            })
            .await?;
            expect(Stage::Rcpt, r, positive)?;
            let r = staged(Stage::Data, t.command, deadline, async {
                wire.write(b"DATA\r\n").await?;
                wire.read_reply().await
            })
            .await?;
            expect(Stage::Data, r, |c| c == 354)?;
        }

        let stuffed = dot_stuff(message);
        let wire = &mut self.wire;
        staged(Stage::Message, t.data_block, deadline, wire.write(&stuffed)).await?;
        let final_deadline = deadline.max(Instant::now() + t.final_reply_grace);
        let reply = staged(
            Stage::Message,
            t.command.max(t.final_reply_grace),
            final_deadline,
            wire.read_reply(),
        )
        .await?;
        expect(Stage::Message, reply, positive)
    }

    /// MAIL FROM and RCPT TO only, then RSET: would the intake take a journal? (probe).
    /// The replies come back whatever they are; only a broken connection is an error.
    pub async fn try_envelope(
        &mut self,
        from: &str,
        to: &str,
        deadline: Instant,
    ) -> Result<(Reply, Option<Reply>), DeliveryError> {
        let t = self.timeouts;
        let wire = &mut self.wire;
        let mail = format!("MAIL FROM:<{from}>\r\n");
        let mail_reply = staged(Stage::Mail, t.command, deadline, async {
            wire.write(mail.as_bytes()).await?;
            wire.read_reply().await
        })
        .await?;
        let rcpt_reply = if positive(mail_reply.code) {
            let rcpt = format!("RCPT TO:<{to}>\r\n");
            Some(
                staged(Stage::Rcpt, t.command, deadline, async {
                    wire.write(rcpt.as_bytes()).await?;
                    wire.read_reply().await
                })
                .await?,
            )
        } else {
            None
        };
        self.reset(deadline).await?;
        Ok((mail_reply, rcpt_reply))
    }

    /// RSET between transactions on one connection.
    pub async fn reset(&mut self, deadline: Instant) -> Result<(), DeliveryError> {
        let wire = &mut self.wire;
        let reply = staged(Stage::Rset, self.timeouts.command, deadline, async {
            wire.write(b"RSET\r\n").await?;
            wire.read_reply().await
        })
        .await?;
        expect(Stage::Rset, reply, positive).map(|_| ())
    }

    /// QUIT politely; the outcome of the journals is already decided, so errors here are
    /// of no consequence.
    pub async fn quit(mut self) {
        let wire = &mut self.wire;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            wire.write(b"QUIT\r\n").await?;
            wire.read_reply().await
        })
        .await;
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.wire.io.get_mut().shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[test]
    fn certificate_problems_are_read_from_the_error_type() {
        use rustls::CertificateError as C;
        let problem = |c: C| tls_problem(&rustls::Error::InvalidCertificate(c));
        assert_eq!(problem(C::UnknownIssuer), TlsProblem::UntrustedIssuer);
        assert_eq!(problem(C::BadSignature), TlsProblem::UntrustedIssuer);
        assert_eq!(problem(C::NotValidForName), TlsProblem::WrongName);
        assert_eq!(problem(C::Expired), TlsProblem::Expired);
        assert_eq!(problem(C::NotValidYet), TlsProblem::NotValidYet);
        assert_eq!(problem(C::Revoked), TlsProblem::Other);
        assert_eq!(
            tls_problem(&rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered
            )),
            TlsProblem::Other
        );
    }

    #[tokio::test]
    async fn read_replies_reads_a_conversation_and_stops_at_a_bad_reply() {
        let replies = read_replies(
            b"220 intake ESMTP\r\n250-intake\r\n250-STARTTLS\r\n250 8BITMIME\r\n\
              451 4.3.0 busy\r\n25x nonsense\r\n250 never read\r\n",
        )
        .await;
        assert_eq!(replies.len(), 4, "{replies:?}");
        let (greeting, _) = replies[0].as_ref().expect("greeting");
        assert_eq!(greeting.code, 220);
        let (ehlo, caps) = replies[1].as_ref().expect("ehlo");
        assert_eq!(ehlo.code, 250);
        assert!(caps.starttls && caps.eight_bit_mime && !caps.pipelining);
        let (busy, _) = replies[2].as_ref().expect("451");
        assert_eq!((busy.code, busy.enhanced), (451, Some([4, 3, 0])));
        assert!(matches!(replies[3], Err(Kind::Protocol(_))));
        // A reply cut off by the end of the input is no reply.
        assert!(read_replies(b"250-partial\r\n").await.is_empty());
        // Codes outside 2yz..5yz (found by the fuzzer: "062" read as 62).
        for bad in [&b"062\n"[..], b"199 x\r\n", b"600 x\r\n", b"260 x\r\n"] {
            let replies = read_replies(bad).await;
            assert!(
                matches!(replies[..], [Err(Kind::Protocol(_))]),
                "{replies:?}"
            );
        }
    }

    /// A scripted server on the other end of an in-memory pipe: for each step, the
    /// command it expects (a prefix; empty: none), then its reply. A DATA body is read
    /// up to its final dot and kept. Returns what the client sent.
    fn scripted_server(
        server: tokio::io::DuplexStream,
        steps: Vec<(&'static str, &'static str)>,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut io = BufReader::new(server);
            let mut seen = Vec::new();
            for (expect, reply) in steps {
                if !expect.is_empty() {
                    let mut line = Vec::new();
                    let end: &[u8] = if expect == "." { b"\r\n.\r\n" } else { b"\n" };
                    while !line.ends_with(end) {
                        if io.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                            return seen;
                        }
                    }
                    assert!(
                        expect == "." || line.starts_with(expect.as_bytes()),
                        "expected {expect:?}, got {:?}",
                        String::from_utf8_lossy(&line)
                    );
                    seen.extend_from_slice(&line);
                }
                if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
                    return seen;
                }
            }
            seen
        })
    }

    /// A session past TLS and EHLO, over `stream`.
    fn session<S: AsyncRead + AsyncWrite + Unpin>(stream: S, caps: Capabilities) -> Session<S> {
        Session {
            wire: Wire {
                io: BufReader::new(stream),
            },
            caps,
            tls_protocol: String::new(),
            tls_cipher: String::new(),
            timeouts: Timeouts::default(),
            dcid: 1,
            local: None,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn a_pipelined_transaction_sends_one_batch_and_the_stuffed_journal() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = scripted_server(
            server,
            vec![
                ("MAIL FROM:<tdc@gw.test> BODY=8BITMIME SIZE=", ""),
                ("RCPT TO:<intake@intake.test>", ""),
                ("DATA", "250 ok\r\n250 ok\r\n354 go\r\n"),
                (".", "250 2.0.0 queued as X1\r\n"),
            ],
        );
        let caps = Capabilities {
            pipelining: true,
            eight_bit_mime: true,
            size: Some(0),
            ..Capabilities::default()
        };
        let mut s = session(client, caps);
        let reply = s
            .send(
                "tdc@gw.test",
                "intake@intake.test",
                b"a\r\n.b\r\n",
                true,
                soon(),
            )
            .await
            .expect("delivered");
        assert_eq!((reply.code, reply.text.as_str()), (250, "queued as X1"));
        drop(s);
        let seen = server.await.expect("server");
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "MAIL FROM:<tdc@gw.test> BODY=8BITMIME SIZE=7\r\nRCPT TO:<intake@intake.test>\r\nDATA\r\na\r\n..b\r\n.\r\n"
        );
    }

    #[tokio::test]
    async fn a_refused_recipient_is_the_failure_not_the_data_that_follows() {
        for pipelining in [true, false] {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let steps = if pipelining {
                vec![
                    ("MAIL FROM:", ""),
                    ("RCPT TO:", ""),
                    (
                        "DATA",
                        "250 ok\r\n550 5.1.1 no such user\r\n503 5.5.1 no recipients\r\n",
                    ),
                ]
            } else {
                vec![
                    ("MAIL FROM:", "250 ok\r\n"),
                    ("RCPT TO:", "550 5.1.1 no such user\r\n"),
                ]
            };
            let _server = scripted_server(server, steps);
            let caps = Capabilities {
                pipelining,
                ..Capabilities::default()
            };
            let mut s = session(client, caps);
            let err = s
                .send("tdc@gw.test", "intake@intake.test", b"x\r\n", false, soon())
                .await
                .expect_err("refused");
            assert_eq!(err.stage, Stage::Rcpt, "pipelining {pipelining}");
            assert!(
                matches!(&err.kind, Kind::Reply(r) if r.code == 550),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn eight_bit_journals_wait_for_a_server_that_takes_them() {
        let (client, server) = tokio::io::duplex(1024);
        let server = scripted_server(server, Vec::new());
        let mut s = session(client, Capabilities::default());
        let err = s
            .send(
                "a@gw.test",
                "b@intake.test",
                "é\r\n".as_bytes(),
                true,
                soon(),
            )
            .await
            .expect_err("no 8BITMIME");
        assert_eq!((err.stage, err.kind), (Stage::Mail, Kind::No8BitMime));
        drop(s);
        assert!(server.await.expect("server").is_empty(), "nothing was sent");
    }

    fn dialer_parts() -> (super::super::tls::TlsClient, Log, Target) {
        let settings = crate::config::TlsSettings {
            verify: false,
            ca_file: None,
            cert_match: crate::config::CertMatch::defaults(),
        };
        let tls = super::super::tls::TlsClient::new(&settings).expect("tls client");
        let target = Target {
            address: "192.0.2.25:25".parse().expect("addr"),
            tls_name: "mx.intake.test".into(),
            nexthop: "intake.test".into(),
        };
        (tls, Log::memory(), target)
    }

    #[tokio::test]
    async fn a_server_without_starttls_or_injecting_before_tls_gets_no_journal() {
        let cases = [
            (
                vec![
                    ("", "220 mx\r\n"),
                    ("EHLO gw.test", "250-mx\r\n250 PIPELINING\r\n"),
                ],
                Stage::Ehlo,
                "the server does not offer STARTTLS",
            ),
            (
                vec![
                    ("", "220 mx\r\n"),
                    ("EHLO gw.test", "250-mx\r\n250 STARTTLS\r\n"),
                    ("STARTTLS", "220 go ahead\r\n250 injected\r\n"),
                ],
                Stage::StartTls,
                "plaintext data after the STARTTLS reply",
            ),
        ];
        let (tls, log, target) = dialer_parts();
        for (steps, stage, why) in cases {
            let (client, server) = tokio::io::duplex(4096);
            let _server = scripted_server(server, steps);
            let dialer = Dialer {
                helo_name: "gw.test",
                tls: &tls,
                timeouts: Timeouts::default(),
                log: &log,
            };
            let Err(err) = dialer.establish(client, None, &target, 1, soon()).await else {
                panic!("{why}: must fail");
            };
            assert_eq!(err.stage, stage, "{why}");
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
