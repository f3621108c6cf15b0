//! `tdc-milter probe [ADDRESS]`: walks the path a journal takes to the intake and says,
//! in plain words, where it breaks. The appliance's answer to a TLS error is "contact
//! support"; this is ours.
//!
//! For the intake address (or the one given): the route (the hosts found in DNS or the
//! static route), then for each host in delivery's order: TCP connect, greeting, EHLO
//! and what it offers, STARTTLS, the TLS version and cipher, the certificate (and when
//! it fails, exactly why), EHLO again, `MAIL FROM` and `RCPT TO`, then RSET and QUIT.
//! It never sends DATA, so no message reaches the intake. The session is opened by the
//! same code, settings and TLS configuration as delivery's; the probe only watches it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{Route, Settings, TlsSettings};
use crate::delivery::route::{Router, Target};
use crate::delivery::smtp::{self, Dialer, Milestone, Timeouts};
use crate::delivery::{tls, DeliveryError, FailureClass, Kind, Reply, Stage};
use crate::tdclog::{sanitize, Log};

/// The probe gives up on one host after this long (or the journal lifetime, if shorter).
const PER_HOST: Duration = Duration::from_secs(30);

/// One thing the probe checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What was checked: `route`, `connect`, `greeting`, `EHLO`, `STARTTLS`, `TLS`,
    /// `certificate`, `EHLO after STARTTLS`, `MAIL FROM`, `RCPT TO`, `RSET`, `QUIT`.
    pub name: String,
    pub ok: bool,
    /// What was found, or what exactly failed.
    pub detail: String,
}

/// What the probe found, step by step, and what it means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The intake address probed (empty when there was none).
    pub address: String,
    pub steps: Vec<Step>,
    /// In plain words: would a journal be accepted, and if not, what to fix.
    pub verdict: String,
    /// A journal would be accepted: the intake took RCPT TO over TLS ≥ 1.2 with the
    /// certificate verified (or with verification turned off by the settings).
    pub accepted: bool,
}

impl Report {
    fn step(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.steps.push(Step {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        });
    }

    fn fail(mut self, why: impl AsRef<str>) -> Report {
        self.accepted = false;
        self.verdict = if self.address.is_empty() {
            format!("Verdict: nothing was probed: {}.", why.as_ref())
        } else {
            format!(
                "Verdict: journals to {} would NOT be accepted: {}.",
                self.address,
                why.as_ref()
            )
        };
        self
    }

    /// One line per step (`[ ok ] route: …`, `[FAIL] certificate: …`), a blank line,
    /// then the verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let mark = if s.ok { "[ ok ]" } else { "[FAIL]" };
            out.push_str(&format!("{mark} {}: {}\n", s.name, s.detail));
        }
        out.push('\n');
        out.push_str(&self.verdict);
        out.push('\n');
        out
    }
}

/// Probes the intake `address` (default: the configured `intake_address`).
pub async fn probe(settings: &Settings, address: Option<&str>) -> Report {
    let mut report = Report {
        address: String::new(),
        steps: Vec::new(),
        verdict: String::new(),
        accepted: false,
    };
    let (address, domain) = match intake_address(settings, address) {
        Ok((address, domain, from)) => {
            report.step("intake address", true, format!("{address} ({from})"));
            (address, domain)
        }
        Err(e) => {
            report.step("intake address", false, e.clone());
            return report.fail(e);
        }
    };
    report.address = address.clone();

    // The same TLS configuration and router as delivery builds (Deliverer::new).
    let connector = match tls::client_config(&settings.delivery.tls) {
        Ok(config) => smtp::connector(config),
        Err(e) => {
            report.step("TLS set-up", false, e.to_string());
            return report.fail(format!(
                "tdc-milter cannot set up TLS at all ({e}): check delivery.tls.ca_file"
            ));
        }
    };
    let router = match Router::new(
        settings.delivery.route.clone(),
        &settings.delivery.resolver,
        settings.delivery.port,
    ) {
        Ok(r) => r,
        Err(e) => {
            report.step("DNS set-up", false, e.clone());
            return report.fail(format!(
                "tdc-milter cannot set up DNS at all ({e}): check delivery.resolver"
            ));
        }
    };
    let targets = match router.targets(&domain).await {
        Ok(t) => t,
        Err(e) => {
            report.step("route", false, detail_of(&e));
            return report.fail(route_verdict(&e, &domain));
        }
    };
    report.step("route", true, describe_route(settings, &domain, &targets));

    let helo = helo_name(&settings.journal.sender);
    // The probe's own log lines (New SMTP DCID, TLS success) stay out of the mail log.
    let log = Log::memory();
    let dialer = Dialer {
        helo_name: &helo,
        connector: &connector,
        timeouts: Timeouts::default(),
        log: &log,
    };
    let probe = Probe {
        settings,
        dialer,
        address: &address,
    };
    let mut unreachable: Vec<String> = Vec::new();
    for target in &targets {
        match probe.target(target, &mut report).await {
            Outcome::Accepted(verdict) => {
                let mut verdict = verdict;
                if !unreachable.is_empty() {
                    verdict.push_str(&format!(
                        " (Before it, {} could not be reached; delivery falls back the same way.)",
                        unreachable.join(", ")
                    ));
                }
                report.accepted = true;
                report.verdict = format!("Verdict: journals to {address} would be accepted: {verdict}");
                return report;
            }
            Outcome::Unreachable(what) => unreachable.push(what),
            Outcome::Failed(why) => return report.fail(why),
        }
    }
    let why = match unreachable.as_slice() {
        [one] => format!("cannot reach {one}"),
        many => format!("cannot reach any mail host of {domain}: {}", many.join(", ")),
    };
    let ports: Vec<String> = {
        let mut ports: Vec<u16> = targets.iter().map(|t| t.address.port()).collect();
        ports.dedup();
        ports.iter().map(u16::to_string).collect()
    };
    report.fail(format!(
        "{why}: check firewalls and that outbound connections to port {} are allowed from this machine",
        ports.join("/")
    ))
}

/// The address to probe, its domain, and where it came from.
fn intake_address(
    settings: &Settings,
    given: Option<&str>,
) -> Result<(String, String, &'static str), String> {
    let (text, from) = match given {
        Some(text) => (text.trim().to_string(), "given on the command line"),
        None => match &settings.intake_address {
            Some(address) => (address.clone(), "intake_address"),
            None => {
                return Err(
                    "no intake address: give one (tdc-milter probe ADDRESS) or set intake_address"
                        .into(),
                )
            }
        },
    };
    let shown = sanitize(&text);
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(format!("'{shown}' is not an address (local@domain)"));
    };
    if local.is_empty() || domain.is_empty() {
        return Err(format!("'{shown}' is not an address (local@domain)"));
    }
    let domain = idna::domain_to_ascii(domain.trim_end_matches('.'))
        .map_err(|_| format!("'{shown}' does not have a valid domain"))?;
    if domain.is_empty() {
        return Err(format!("'{shown}' does not have a valid domain"));
    }
    Ok((format!("{local}@{domain}"), domain, from))
}

/// The EHLO name delivery uses: the journal sender's domain.
fn helo_name(sender: &str) -> String {
    sender
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `MX intake.test → mx1.intake.test (192.0.2.1:25, [2001:db8::1]:25), mx2.intake.test (…)`.
fn describe_route(settings: &Settings, domain: &str, targets: &[Target]) -> String {
    let mut hosts: Vec<(&str, Vec<SocketAddr>)> = Vec::new();
    for t in targets {
        match hosts.iter_mut().find(|(name, _)| *name == t.tls_name) {
            Some((_, addresses)) => addresses.push(t.address),
            None => hosts.push((&t.tls_name, vec![t.address])),
        }
    }
    let list = hosts
        .iter()
        .map(|(name, addresses)| {
            let shown: Vec<String> = addresses.iter().map(SocketAddr::to_string).collect();
            if addresses.len() == 1 && addresses[0].ip().to_string() == *name {
                shown.join(", ")
            } else {
                format!("{name} ({})", shown.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    match &settings.delivery.route {
        Route::Static(_) => format!("static route (delivery.route) → {list}"),
        Route::Dns if hosts.len() == 1 && hosts[0].0.eq_ignore_ascii_case(domain) => {
            format!("{domain} is its own mail host (no MX record, or an MX naming it) → {list}")
        }
        Route::Dns => format!("MX {domain} → {list}"),
    }
}

/// `127.0.0.1:2525`, or `mx1.intake.test (192.0.2.1:25)`.
fn describe_target(target: &Target) -> String {
    if target.address.ip().to_string() == target.tls_name {
        target.address.to_string()
    } else {
        format!("{} ({})", target.tls_name, target.address)
    }
}

fn detail_of(e: &DeliveryError) -> String {
    match &e.kind {
        Kind::Reply(r) => shown_reply(r),
        Kind::Timeout => "no answer in time (timeout)".into(),
        Kind::TlsUnavailable(why)
        | Kind::Tls(why)
        | Kind::Network(why)
        | Kind::DnsPermanent(why)
        | Kind::DnsTemporary(why)
        | Kind::Protocol(why) => sanitize(why),
        Kind::No8BitMime => e.to_string(),
    }
}

fn shown_reply(r: &Reply) -> String {
    sanitize(&r.to_string())
}

/// What a failed route lookup means for the administrator.
fn route_verdict(e: &DeliveryError, domain: &str) -> String {
    match &e.kind {
        Kind::DnsPermanent(d) if d.ends_with("NXDomain") && d.starts_with(domain) => format!(
            "the intake domain {domain} does not exist ({d}): check intake_address; journals to it are hard bounced"
        ),
        Kind::DnsPermanent(d) if d.ends_with("NXDomain") => format!(
            "the mail host of {domain} does not exist in DNS ({d}): the intake's DNS is broken, or intake_address is wrong"
        ),
        Kind::DnsPermanent(d) if d.ends_with("Null MX") => format!(
            "the intake domain {domain} says it takes no mail (null MX: {d}): check intake_address"
        ),
        Kind::DnsPermanent(d) => format!(
            "no mail host of {domain} has an address ({d}): check intake_address, or delivery.route if it is static"
        ),
        Kind::DnsTemporary(d) => format!(
            "DNS did not answer properly ({d}): check the name server (delivery.resolver, or /etc/resolv.conf when it is 'system'); journals are retried once meanwhile"
        ),
        _ => format!("no route to {domain}: {}", detail_of(e)),
    }
}

/// What became of one host.
enum Outcome {
    /// The intake would take a journal; the verdict's reason.
    Accepted(String),
    /// A network failure before the session got going: delivery tries the next host.
    /// `HOST:PORT (why)`.
    Unreachable(String),
    /// Anything else: delivery stops here, and so does the probe.
    Failed(String),
}

/// What the opening of a session went through, as the milestones came in.
#[derive(Default)]
struct Seen {
    steps: Vec<Step>,
    tls_failure: Option<rustls::Error>,
    protocol: Option<String>,
    certificates: Vec<CertificateDer<'static>>,
    eight_bit_mime: bool,
    size: Option<usize>,
    cipher: Option<String>,
}

impl Seen {
    fn push(&mut self, name: &str, ok: bool, detail: String) {
        self.steps.push(Step {
            name: name.to_string(),
            ok,
            detail,
        });
    }

    fn record(&mut self, target: &str, helo: &str, milestone: Milestone<'_>) {
        match milestone {
            Milestone::Connected { local } => {
                let from = local.map(|ip| format!(" from {ip}")).unwrap_or_default();
                self.push("connect", true, format!("{target}: connected{from}"));
            }
            Milestone::Greeting(reply) => self.push("greeting", true, shown_reply(reply)),
            Milestone::Ehlo {
                capabilities,
                keywords,
            } => {
                let offers = offered(keywords);
                let detail = if capabilities.starttls {
                    format!("EHLO {helo}: {offers}")
                } else {
                    format!("EHLO {helo}: {offers} (no STARTTLS)")
                };
                self.push("EHLO", true, detail);
            }
            Milestone::StartTls(reply) => self.push("STARTTLS", true, shown_reply(reply)),
            Milestone::TlsFailed(e) => self.tls_failure = Some(e.clone()),
            Milestone::Tls {
                protocol,
                cipher,
                certificates,
            } => {
                self.protocol = Some(protocol.to_string());
                self.cipher = Some(cipher.to_string());
                self.certificates = certificates.to_vec();
                self.push("TLS", true, format!("{protocol}, cipher {cipher}"));
            }
            Milestone::TlsEhlo {
                capabilities,
                keywords,
            } => {
                self.eight_bit_mime = capabilities.eight_bit_mime;
                self.size = capabilities.size;
                self.push("EHLO after STARTTLS", true, offered(keywords));
            }
        }
    }
}

fn offered(keywords: &[String]) -> String {
    if keywords.is_empty() {
        "offers no extensions".into()
    } else {
        format!("offers {}", keywords.join(", "))
    }
}

struct Probe<'a> {
    settings: &'a Settings,
    dialer: Dialer<'a>,
    address: &'a str,
}

impl Probe<'_> {
    async fn target(&self, target: &Target, report: &mut Report) -> Outcome {
        let shown = describe_target(target);
        let deadline = Instant::now() + PER_HOST.min(self.settings.delivery.lifetime);
        let mut seen = Seen::default();
        let helo = self.dialer.helo_name;
        let opened = self
            .dialer
            .open_observed(target, 0, deadline, &mut |m| seen.record(&shown, helo, m))
            .await;
        let mut session = match opened {
            Ok(session) => session,
            Err(open) => {
                report.steps.append(&mut seen.steps);
                return self.open_failed(target, &shown, open.error, seen, report).await;
            }
        };
        report.steps.append(&mut seen.steps);
        let Some(protocol) = seen.protocol.clone() else {
            report.step("TLS", false, "the TLS version was not reported");
            session.quit().await;
            return Outcome::Failed(format!("{shown}: the TLS session could not be checked"));
        };
        let verified = self.certificate_step(target, &seen, report);

        let sender = &self.settings.journal.sender;
        let envelope = session
            .try_envelope(sender, self.address, deadline)
            .await;
        let (mail, rcpt) = match envelope {
            Ok(replies) => replies,
            Err(e) => {
                report.step(e.stage.name(), false, detail_of(&e));
                return Outcome::Failed(session_verdict(&e, &shown));
            }
        };
        report.step(
            "MAIL FROM",
            mail.is_positive(),
            format!("<{sender}>: {}", shown_reply(&mail)),
        );
        if let Some(rcpt) = &rcpt {
            report.step(
                "RCPT TO",
                rcpt.is_positive(),
                format!("<{}>: {}", self.address, shown_reply(rcpt)),
            );
        }
        report.step("RSET", true, "transaction cancelled; no message was sent");
        match session.quit_reply().await {
            Some(reply) => report.step("QUIT", true, shown_reply(&reply)),
            None => report.step("QUIT", true, "sent (no reply; the session is closed anyway)"),
        }

        let Some(rcpt) = rcpt else {
            return Outcome::Failed(format!(
                "{shown} refuses the journal sender <{sender}> ({}): check journal.sender (and that this gateway may send to the intake)",
                shown_reply(&mail)
            ));
        };
        if !rcpt.is_positive() {
            let reply = shown_reply(&rcpt);
            return Outcome::Failed(if rcpt.code >= 500 {
                format!(
                    "the intake refuses this address ({reply}): check intake_address against the address shown in the Secure Email Threat Defense portal"
                )
            } else {
                format!(
                    "the intake refuses this address for now ({reply}); journals would be retried once. If this lasts, check intake_address and the intake's status"
                )
            });
        }
        if protocol != "TLSv1.2" && protocol != "TLSv1.3" {
            return Outcome::Failed(format!(
                "{shown} negotiated {protocol}; tdc-milter requires TLS 1.2 or newer"
            ));
        }
        let mut why = match verified {
            Verified::Yes => format!(
                "{shown} takes them over {protocol} with a verified certificate."
            ),
            Verified::Off(None) => format!(
                "{shown} takes them over {protocol}, but the certificate is not verified (delivery.tls.verify: false); it would pass verification, so verify can be turned on."
            ),
            Verified::Off(Some(problem)) => format!(
                "{shown} takes them over {protocol}, but the certificate is not verified (delivery.tls.verify: false), and it would not pass verification ({problem}): anyone in between could read the journals."
            ),
        };
        if !seen.eight_bit_mime {
            why.push_str(
                " Note: the intake does not offer 8BITMIME; journals of 8-bit originals would be refused.",
            );
        }
        if let Some(limit) = seen.size.filter(|&l| l > 0) {
            if (limit as u64) < self.settings.journal.max_size {
                why.push_str(&format!(
                    " Note: the intake takes messages up to {limit} bytes (SIZE), less than journal.max_size ({}): larger journals would be refused.",
                    self.settings.journal.max_size
                ));
            }
        }
        Outcome::Accepted(why)
    }

    /// The certificate step of a session that opened: verified during the handshake,
    /// or (verification off) checked here for the record.
    fn certificate_step(&self, target: &Target, seen: &Seen, report: &mut Report) -> Verified {
        let summary = seen
            .certificates
            .first()
            .and_then(|leaf| summarize(leaf))
            .map(|s| format!("; {s}"))
            .unwrap_or_default();
        let tls_settings = &self.settings.delivery.tls;
        if tls_settings.verify {
            report.step(
                "certificate",
                true,
                format!("verified for {}{summary}", target.tls_name),
            );
            return Verified::Yes;
        }
        match tls::check_chain(
            tls_settings.ca_file.as_deref(),
            &seen.certificates,
            &target.tls_name,
        ) {
            Ok(()) => {
                report.step(
                    "certificate",
                    true,
                    format!(
                        "not verified by delivery (delivery.tls.verify: false); it would verify for {}{summary}",
                        target.tls_name
                    ),
                );
                Verified::Off(None)
            }
            Err(e) => {
                let (words, _) = tls_problem(&e, &target.tls_name, &seen.certificates);
                report.step(
                    "certificate",
                    false,
                    format!(
                        "not verified by delivery (delivery.tls.verify: false); it would fail: {words}{summary}"
                    ),
                );
                Verified::Off(Some(words))
            }
        }
    }

    async fn open_failed(
        &self,
        target: &Target,
        shown: &str,
        e: DeliveryError,
        seen: Seen,
        report: &mut Report,
    ) -> Outcome {
        let port = target.address.port();
        let detail = detail_of(&e);
        // Delivery goes on to the next host for these, and so do we.
        let next_host = e.class() == FailureClass::Network
            && matches!(e.stage, Stage::Connect | Stage::Greeting | Stage::Ehlo);
        match (e.stage, &e.kind) {
            (Stage::Connect, _) => {
                report.step("connect", false, format!("{shown}: {detail}"));
            }
            (Stage::Ehlo, Kind::TlsUnavailable(_)) => {
                report.step(
                    "STARTTLS",
                    false,
                    format!("{shown} does not offer STARTTLS in its EHLO reply"),
                );
                return Outcome::Failed(
                    "the intake (or something in between, such as a firewall that strips STARTTLS) does not offer STARTTLS; tdc-milter never sends journals in plaintext".into(),
                );
            }
            (Stage::StartTls, Kind::Reply(r)) => {
                report.step("STARTTLS", false, format!("refused: {}", shown_reply(r)));
                return Outcome::Failed(format!(
                    "{shown} refuses STARTTLS ({}); tdc-milter never sends journals in plaintext",
                    shown_reply(r)
                ));
            }
            (Stage::StartTls, Kind::Tls(why)) => {
                report.step("STARTTLS", false, sanitize(why));
                return Outcome::Failed(format!(
                    "{shown} sent data right after agreeing to STARTTLS, before encryption; something in between may be tampering with the session"
                ));
            }
            (Stage::TlsHandshake, _) => {
                return self.handshake_failed(target, shown, &e, seen, report).await;
            }
            (stage, _) => report.step(stage.name(), false, detail.clone()),
        }
        if next_host {
            let why = match &e.kind {
                Kind::Timeout => "no answer in time".to_string(),
                _ => detail,
            };
            let at = match e.stage {
                Stage::Connect => String::new(),
                stage => format!(" at {}", stage.name()),
            };
            return Outcome::Unreachable(format!("{}:{port} ({why}{at})", host_of(target)));
        }
        Outcome::Failed(session_verdict(&e, shown))
    }

    /// A failed handshake: why, in words. A certificate problem is looked at again over
    /// a second connection that does not verify, to show what the server presents.
    async fn handshake_failed(
        &self,
        target: &Target,
        shown: &str,
        e: &DeliveryError,
        seen: Seen,
        report: &mut Report,
    ) -> Outcome {
        let Some(failure) = seen.tls_failure else {
            let detail = detail_of(e);
            report.step("TLS", false, detail.clone());
            return Outcome::Failed(format!(
                "the TLS handshake with {shown} failed ({detail}); the intake, or something in between, broke it off"
            ));
        };
        let (words, verdict) = tls_problem(&failure, &target.tls_name, &[]);
        if !matches!(failure, rustls::Error::InvalidCertificate(_)) {
            report.step("TLS", false, words);
            return Outcome::Failed(verdict);
        }
        let mut summary = String::new();
        let mut inspected = None;
        if let Some(look) = self.inspect(target).await {
            report.step(
                "TLS",
                true,
                format!(
                    "{}, cipher {} (seen on a second connection that does not verify the certificate)",
                    look.protocol, look.cipher
                ),
            );
            if let Some(s) = look.certificates.first().and_then(|leaf| summarize(leaf)) {
                summary = format!("; the server presents {s}");
            }
            inspected = Some(look.certificates);
        }
        // Names and dates from the chain when rustls did not give them.
        let (words, verdict) = match &inspected {
            Some(chain) => tls_problem(&failure, &target.tls_name, chain),
            None => (words, verdict),
        };
        report.step("certificate", false, format!("{words}{summary}"));
        Outcome::Failed(verdict)
    }

    /// A second session whose TLS accepts any certificate, only to see the chain.
    async fn inspect(&self, target: &Target) -> Option<Inspected> {
        let anything = TlsSettings {
            verify: false,
            ca_file: None,
        };
        let connector = smtp::connector(tls::client_config(&anything).ok()?);
        let dialer = Dialer {
            connector: &connector,
            ..self.dialer
        };
        let deadline = Instant::now() + PER_HOST.min(self.settings.delivery.lifetime);
        let mut look = None;
        let opened = dialer
            .open_observed(target, 0, deadline, &mut |m| {
                if let Milestone::Tls {
                    protocol,
                    cipher,
                    certificates,
                } = m
                {
                    look = Some(Inspected {
                        protocol: protocol.to_string(),
                        cipher: cipher.to_string(),
                        certificates: certificates.to_vec(),
                    });
                }
            })
            .await;
        if let Ok(session) = opened {
            session.quit().await;
        }
        look
    }
}

struct Inspected {
    protocol: String,
    cipher: String,
    certificates: Vec<CertificateDer<'static>>,
}

enum Verified {
    Yes,
    /// Verification is off; `Some(why)` if the certificate would not pass.
    Off(Option<String>),
}

/// The host part for "cannot reach HOST:PORT".
fn host_of(target: &Target) -> String {
    match target.address.ip() {
        IpAddr::V6(ip) if ip.to_string() == target.tls_name => format!("[{ip}]"),
        ip if ip.to_string() == target.tls_name => ip.to_string(),
        ip => format!("{} ({ip})", target.tls_name),
    }
}

/// The verdict for a failure inside an open session or at its opening (after TCP).
fn session_verdict(e: &DeliveryError, shown: &str) -> String {
    let detail = detail_of(e);
    let stage = e.stage.name();
    match &e.kind {
        Kind::Reply(r) if e.stage == Stage::Greeting => format!(
            "{shown} turns the connection away at the greeting ({}){}",
            shown_reply(r),
            if r.code < 500 {
                "; journals are retried once, check the intake's status"
            } else {
                ": this gateway may be blocked by the intake"
            }
        ),
        Kind::Reply(r) => format!("{shown} answered {} to {stage}", shown_reply(r)),
        Kind::Timeout => format!(
            "{shown} did not answer {stage} in time: something in between (a firewall or proxy that inspects SMTP) may hold the session"
        ),
        Kind::Network(_) => format!(
            "{shown} closed the connection at {stage} ({detail}): check firewalls and proxies between this machine and the intake"
        ),
        Kind::Protocol(_) => format!(
            "{shown} does not speak SMTP as expected at {stage} ({detail}): is this really the intake, or something in between?"
        ),
        _ => format!("{stage} failed: {detail}"),
    }
}

/// A rustls failure in words for the step, and what it means for the verdict. `chain`
/// (leaf first, may be empty) adds names and dates rustls does not carry.
fn tls_problem(
    e: &rustls::Error,
    host: &str,
    chain: &[CertificateDer<'static>],
) -> (String, String) {
    let leaf = chain.first().and_then(|c| summarize(c));
    let text = sanitize(&e.to_string());
    match e {
        rustls::Error::InvalidCertificate(c) => certificate_problem(c, &text, host, leaf.as_ref()),
        rustls::Error::PeerIncompatible(_)
        | rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure,
        ) => (
            format!("no common TLS version or cipher: {text}"),
            "the intake and tdc-milter share no TLS version or cipher; tdc-milter requires TLS 1.2 or newer (with a modern cipher), so the intake, or a proxy in between, only speaks something older".into(),
        ),
        rustls::Error::AlertReceived(alert) => (
            format!("the server broke off the handshake: {text}"),
            format!(
                "the intake broke off the TLS handshake (alert {alert:?}); check for a proxy in between that inspects TLS"
            ),
        ),
        _ => (
            format!("handshake failed: {text}"),
            format!("the TLS handshake with the intake failed ({text})"),
        ),
    }
}

fn certificate_problem(
    c: &CertificateError,
    text: &str,
    host: &str,
    leaf: Option<&Summary>,
) -> (String, String) {
    match c {
        CertificateError::UnknownIssuer => {
            let issuer = leaf
                .map(|l| {
                    if l.self_signed {
                        " (the certificate is self-signed)".to_string()
                    } else {
                        format!(" (issuer: {})", l.issuer)
                    }
                })
                .unwrap_or_default();
            (
                format!(
                    "not trusted: {text} (the intake's CA is not in the system store or delivery.tls.ca_file){issuer}"
                ),
                format!(
                    "the intake's certificate is signed by a CA that tdc-milter does not trust{issuer}: add that CA to the system store or name it in delivery.tls.ca_file, or find out what is presenting this certificate (a TLS-inspecting proxy?)"
                ),
            )
        }
        CertificateError::BadSignature => (
            format!("not trusted: {text} (the certificate's signature does not match its issuer)"),
            "the intake's certificate chain is broken (a bad signature): the intake's operator must fix it".into(),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let presented = match c {
                CertificateError::NotValidForNameContext { presented, .. } if !presented.is_empty() => {
                    presented.iter().map(|n| sanitize(n)).collect::<Vec<_>>()
                }
                _ => leaf.map(|l| l.names.clone()).unwrap_or_default(),
            };
            let names = if presented.is_empty() {
                String::new()
            } else {
                format!(" (it names {})", presented.join(", "))
            };
            (
                format!("not valid for the name {host}{names}: {text}"),
                format!(
                    "the intake's certificate is not valid for {host}, the host tdc-milter connects to{names}: check that the route (the MX records, or delivery.route) names the intake's real host"
                ),
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            let when = match c {
                CertificateError::ExpiredContext { not_after, .. } => {
                    Some(format_unix(not_after.as_secs()))
                }
                _ => leaf.and_then(|l| l.not_after.clone()),
            };
            let since = when.map(|w| format!(" on {w}")).unwrap_or_default();
            (
                format!("expired{since}: {text}"),
                format!(
                    "the intake's certificate expired{since}: its operator must renew it (if it looks current, check this machine's clock)"
                ),
            )
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            let when = match c {
                CertificateError::NotValidYetContext { not_before, .. } => {
                    Some(format_unix(not_before.as_secs()))
                }
                _ => leaf.and_then(|l| l.not_before.clone()),
            };
            let from = when.map(|w| format!(" before {w}")).unwrap_or_default();
            (
                format!("not valid yet{from}: {text}"),
                format!(
                    "the intake's certificate is not valid yet{from}: check this machine's clock"
                ),
            )
        }
        CertificateError::Revoked => (
            format!("revoked: {text}"),
            "the intake's certificate has been revoked: its operator must replace it".into(),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
            format!("not meant for a TLS server: {text}"),
            "the intake's certificate is not issued for TLS servers (extended key usage): its operator must replace it".into(),
        ),
        _ => (
            format!("rejected: {text}"),
            format!("the intake's certificate was rejected ({text})"),
        ),
    }
}

/// `2025-03-01 12:00:00 UTC`.
fn format_unix(secs: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{secs} (UNIX time)"))
}

/// What the leaf certificate says about itself, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    subject: String,
    issuer: String,
    self_signed: bool,
    /// subjectAltName DNS names and IP addresses.
    names: Vec<String>,
    not_before: Option<String>,
    not_after: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "subject {}", self.subject)?;
        if self.self_signed {
            write!(f, ", self-signed")?;
        } else {
            write!(f, ", issued by {}", self.issuer)?;
        }
        if self.names.is_empty() {
            write!(f, ", no names (subjectAltName)")?;
        } else {
            write!(f, ", names {}", self.names.join(", "))?;
        }
        if let Some(until) = &self.not_after {
            write!(f, ", valid until {until}")?;
        }
        Ok(())
    }
}

/// Reads subject, issuer, validity and subjectAltName from a certificate's DER. Only
/// what is needed to explain a failure; anything unexpected gives `None`, never a panic.
fn summarize(der: &[u8]) -> Option<Summary> {
    let (tag, cert, _) = der::tlv(der)?;
    if tag != der::SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der::tlv(cert)?;
    if tag != der::SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let mut next = || -> Option<(u8, &[u8])> {
        let (tag, content, after) = der::tlv(rest)?;
        rest = after;
        Some((tag, content))
    };
    let (mut tag, _) = next()?;
    if tag == 0xA0 {
        (tag, _) = next()?; // version
    }
    if tag != der::INTEGER {
        return None; // serial number
    }
    next()?; // signature algorithm
    let (tag, issuer) = next()?;
    if tag != der::SEQUENCE {
        return None;
    }
    let (tag, validity) = next()?;
    if tag != der::SEQUENCE {
        return None;
    }
    let (tag, subject) = next()?;
    if tag != der::SEQUENCE {
        return None;
    }
    next()?; // subject public key info
    let mut names = Vec::new();
    while let Some((tag, content)) = next() {
        if tag == 0xA3 {
            names = der::subject_alt_names(content).unwrap_or_default();
        }
    }
    let (not_before, not_after) = der::validity(validity);
    Some(Summary {
        subject: der::name(subject),
        issuer: der::name(issuer),
        self_signed: subject == issuer,
        names,
        not_before,
        not_after,
    })
}

/// A minimal DER reader for [`summarize`].
mod der {
    use super::*;

    pub const INTEGER: u8 = 0x02;
    pub const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    /// 2.5.4.3 commonName, 2.5.4.10 organizationName.
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0A];
    /// 2.5.29.17 subjectAltName.
    const SAN: &[u8] = &[0x55, 0x1D, 0x11];

    /// One TLV with a single-byte tag: (tag, content, what follows).
    pub fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = rest.get(..n)?;
            let len = bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, rest.get(n..)?)
        };
        Some((tag, rest.get(..len)?, rest.get(len..)?))
    }

    /// Every TLV in `input`, in order (stops at the first malformed one).
    fn items(mut input: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while let Some((tag, content, rest)) = tlv(input) {
            out.push((tag, content));
            input = rest;
        }
        out
    }

    /// `CN=…` (or `O=…`) of a Name; `an unnamed entity` if it has neither.
    pub fn name(name: &[u8]) -> String {
        let mut cn = None;
        let mut o = None;
        for (tag, set) in items(name) {
            if tag != SET {
                continue;
            }
            for (tag, pair) in items(set) {
                if tag != SEQUENCE {
                    continue;
                }
                if let [(OID, oid), (_, value), ..] = items(pair).as_slice() {
                    let value = sanitize(&String::from_utf8_lossy(value));
                    if *oid == CN {
                        cn = Some(value);
                    } else if *oid == O {
                        o = Some(value);
                    }
                }
            }
        }
        match (cn, o) {
            (Some(cn), _) => format!("CN={cn}"),
            (None, Some(o)) => format!("O={o}"),
            (None, None) => "an unnamed entity".into(),
        }
    }

    /// (notBefore, notAfter) as `YYYY-MM-DD HH:MM:SS UTC`.
    pub fn validity(validity: &[u8]) -> (Option<String>, Option<String>) {
        let times: Vec<Option<String>> = items(validity)
            .into_iter()
            .map(|(tag, t)| time(tag, t))
            .collect();
        (
            times.first().cloned().flatten(),
            times.get(1).cloned().flatten(),
        )
    }

    fn time(tag: u8, t: &[u8]) -> Option<String> {
        let t = std::str::from_utf8(t).ok()?;
        let full = match tag {
            // RFC 5280 §4.1.2.5.1: YY ≥ 50 is 19YY.
            UTC_TIME if t.len() == 13 => {
                let yy: u32 = t.get(..2)?.parse().ok()?;
                format!("{}{t}", if yy >= 50 { "19" } else { "20" })
            }
            GENERALIZED_TIME if t.len() == 15 => t.to_string(),
            _ => return None,
        };
        if !full.ends_with('Z') || !full[..14].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(format!(
            "{}-{}-{} {}:{}:{} UTC",
            &full[..4],
            &full[4..6],
            &full[6..8],
            &full[8..10],
            &full[10..12],
            &full[12..14]
        ))
    }

    /// The DNS names and IP addresses of the subjectAltName extension, from the
    /// `[3]` extensions field.
    pub fn subject_alt_names(extensions: &[u8]) -> Option<Vec<String>> {
        let (tag, list, _) = tlv(extensions)?;
        if tag != SEQUENCE {
            return None;
        }
        for (tag, extension) in items(list) {
            if tag != SEQUENCE {
                continue;
            }
            let fields = items(extension);
            let Some((OID, oid)) = fields.first() else {
                continue;
            };
            if *oid != SAN {
                continue;
            }
            let (_, value) = fields.iter().find(|(t, _)| *t == OCTET_STRING)?;
            let (tag, general_names, _) = tlv(value)?;
            if tag != SEQUENCE {
                return None;
            }
            let names = items(general_names)
                .into_iter()
                .filter_map(|(tag, v)| match tag {
                    // [2] dNSName
                    0x82 => Some(sanitize(&String::from_utf8_lossy(v))),
                    // [7] iPAddress
                    0x87 => match v.len() {
                        4 => <[u8; 4]>::try_from(v)
                            .ok()
                            .map(|b| Ipv4Addr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(v)
                            .ok()
                            .map(|b| Ipv6Addr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            return Some(names);
        }
        Some(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(names: &[&str]) -> (Vec<u8>, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Probe Test CA");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Intake Inc");
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("leaf");
        (cert.der().to_vec(), ca.pem())
    }

    #[test]
    fn a_certificate_is_summarized() {
        let (der, _) = leaf(&["mx1.intake.test", "127.0.0.1", "::1"]);
        let s = summarize(&der).expect("summary");
        assert_eq!(s.subject, "O=Intake Inc");
        assert_eq!(s.issuer, "CN=Probe Test CA");
        assert!(!s.self_signed);
        assert_eq!(s.names, ["mx1.intake.test", "127.0.0.1", "::1"]);
        assert_eq!(s.not_after.as_deref(), Some("2031-05-06 00:00:00 UTC"));
        assert_eq!(
            s.to_string(),
            "subject O=Intake Inc, issued by CN=Probe Test CA, names mx1.intake.test, 127.0.0.1, ::1, valid until 2031-05-06 00:00:00 UTC"
        );
    }

    #[test]
    fn broken_certificates_give_nothing_and_never_panic() {
        let (der, ca_pem) = leaf(&["mx1.intake.test"]);
        for n in 0..der.len() {
            let _ = summarize(&der[..n]);
            let mut flipped = der.clone();
            flipped[n] ^= 0xFF;
            let _ = summarize(&flipped);
        }
        assert_eq!(summarize(b""), None);
        assert_eq!(summarize(ca_pem.as_bytes()), None);
    }

    #[test]
    fn times_follow_rfc_5280() {
        assert_eq!(
            der::validity(&[]),
            (None, None),
            "an empty validity has no dates"
        );
        let mut v = vec![0x17, 13];
        v.extend_from_slice(b"491231235959Z");
        v.extend_from_slice(&[0x18, 15]);
        v.extend_from_slice(b"19700101000000Z");
        assert_eq!(
            der::validity(&v),
            (
                Some("2049-12-31 23:59:59 UTC".into()),
                Some("1970-01-01 00:00:00 UTC".into())
            )
        );
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn addresses_are_normalised() {
        let yaml = "intake_address: A@Intake.Test\npolicies:\n  - name: DEFAULT\n    connector: global\n";
        let settings =
            Settings::from_yaml(yaml, std::path::Path::new("t.yaml")).expect("settings");
        let (a, d, from) = intake_address(&settings, None).expect("default");
        assert_eq!((a.as_str(), d.as_str(), from), ("A@intake.test", "intake.test", "intake_address"));
        let (a, d, _) = intake_address(&settings, Some(" x@Bücher.Example ")).expect("given");
        assert_eq!((a.as_str(), d.as_str()), ("x@xn--bcher-kva.example", "xn--bcher-kva.example"));
        assert!(intake_address(&settings, Some("nobody")).is_err());
        assert!(intake_address(&settings, Some("@intake.test")).is_err());
        assert!(intake_address(&settings, Some("a@")).is_err());
    }
}
