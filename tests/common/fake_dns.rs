//! A scripted DNS responder on 127.0.0.1 (UDP and TCP), for routing tests.
//!
//! Each (name, record type) gets an [`Answer`]: records, NXDOMAIN, NODATA, SERVFAIL,
//! REFUSED or no reply at all. A name that has any entry exists, so a type not scripted
//! for it is answered NODATA (NOERROR, empty) like a real zone would; a name with no
//! entry is NXDOMAIN. Names compare case-insensitively, trailing dot or not. Every
//! query received is recorded so tests can assert which lookups happened.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX};
use hickory_resolver::proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

pub use hickory_resolver::proto::rr::RecordType;

/// How the responder answers one (name, type).
#[derive(Debug, Clone)]
pub enum Answer {
    Records(Vec<RData>),
    NxDomain,
    /// NOERROR with no answer.
    NoData,
    ServFail,
    Refused,
    /// Never reply (the client times out).
    NoReply,
}

/// The scripted zone, built with the chained helpers.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    entries: HashMap<(String, RecordType), Answer>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// MX records `(preference, exchange)`, answered in the order given.
    pub fn mx(self, name: &str, records: &[(u16, &str)]) -> Zone {
        let rdata = records
            .iter()
            .map(|(preference, host)| RData::MX(MX::new(*preference, name_of(host))))
            .collect();
        self.answer(name, RecordType::MX, Answer::Records(rdata))
    }

    /// RFC 7505 null MX: `MX 0 .`.
    pub fn null_mx(self, name: &str) -> Zone {
        let rdata = vec![RData::MX(MX::new(0, Name::root()))];
        self.answer(name, RecordType::MX, Answer::Records(rdata))
    }

    /// A and/or AAAA records, by the family of each address.
    pub fn ip(self, name: &str, addresses: &[&str]) -> Zone {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for text in addresses {
            match text.parse::<IpAddr>().expect("an IP address") {
                IpAddr::V4(ip) => v4.push(RData::A(A(ip))),
                IpAddr::V6(ip) => v6.push(RData::AAAA(AAAA(ip))),
            }
        }
        let mut zone = self;
        if !v4.is_empty() {
            zone = zone.answer(name, RecordType::A, Answer::Records(v4));
        }
        if !v6.is_empty() {
            zone = zone.answer(name, RecordType::AAAA, Answer::Records(v6));
        }
        zone
    }

    pub fn answer(mut self, name: &str, rtype: RecordType, answer: Answer) -> Zone {
        self.entries.insert((key(name), rtype), answer);
        self
    }

    fn lookup(&self, name: &str, rtype: RecordType) -> Answer {
        if let Some(answer) = self.entries.get(&(name.to_string(), rtype)) {
            return answer.clone();
        }
        if self.entries.keys().any(|(n, _)| n == name) {
            Answer::NoData
        } else {
            Answer::NxDomain
        }
    }
}

pub struct FakeDns {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeDns {
    /// Listens on 127.0.0.1, UDP and TCP on the same free port.
    pub async fn start(zone: Zone) -> FakeDns {
        // The UDP port may be taken for TCP by someone else: try a few.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
            let addr = udp.local_addr().expect("UDP address");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("UDP address");
        let zone = Arc::new(zone);
        let queries = Arc::new(Mutex::new(Vec::new()));
        let udp_task = tokio::spawn(serve_udp(udp, zone.clone(), queries.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, zone, queries.clone()));
        FakeDns {
            addr,
            queries,
            tasks: vec![udp_task, tcp_task],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far, in order: (name without trailing dot, lower case; type).
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.queries.lock().expect("queries lock").clone()
    }

    /// How many times (name, type) was asked.
    pub fn count(&self, name: &str, rtype: RecordType) -> usize {
        let name = key(name);
        self.queries()
            .iter()
            .filter(|(n, t)| *n == name && *t == rtype)
            .count()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

type Log = Arc<Mutex<Vec<(String, RecordType)>>>;

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>, queries: Log) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = respond(&buf[..len], &zone, &queries) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>, queries: Log) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_tcp_connection(stream, zone.clone(), queries.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, zone: Arc<Zone>, queries: Log) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        // No reply: keep reading until the client gives up and closes.
        if let Some(reply) = respond(&buf, &zone, &queries) {
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// The wire reply to one query, or `None` to stay silent.
fn respond(bytes: &[u8], zone: &Zone, queries: &Log) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    let query = request.queries.first()?.clone();
    let name = key(&query.name().to_ascii());
    let rtype = query.query_type();
    queries
        .lock()
        .expect("queries lock")
        .push((name.clone(), rtype));

    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    match zone.lookup(&name, rtype) {
        Answer::Records(records) => {
            for rdata in records {
                response.add_answer(Record::from_rdata(query.name().clone(), 60, rdata));
            }
        }
        Answer::NoData => {}
        Answer::NxDomain => response.metadata.response_code = ResponseCode::NXDomain,
        Answer::ServFail => response.metadata.response_code = ResponseCode::ServFail,
        Answer::Refused => response.metadata.response_code = ResponseCode::Refused,
        Answer::NoReply => return None,
    }
    response.to_vec().ok()
}

fn name_of(text: &str) -> Name {
    Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).expect("a domain name")
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
