//! Parsers for the string values of the settings file: addresses, policy patterns,
//! domains, sockets and host names. Each returns a lower-case message that carries the
//! bad value; the loader adds the file, line and column.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::{CertMatch, HostPort, Pattern, SocketSpec};

/// Characters allowed in an unquoted local part besides letters and digits (RFC 5322 atext).
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// Parses a milter socket in Postfix syntax: `inet:HOST:PORT` (`inet:[::1]:8895` for
/// IPv6) or `unix:/absolute/path`. An IPv6 host is returned without its brackets.
pub fn parse_socket_spec(text: &str) -> Result<SocketSpec, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!(
                "socket '{text}' needs an absolute path, like unix:/run/tdc-milter/milter.sock"
            ));
        }
        if path.contains('\0') {
            return Err(format!("socket path '{text}' contains a NUL character"));
        }
        return Ok(SocketSpec::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = text.strip_prefix("inet:") {
        let (host, port) = split_host_port(rest).map_err(|e| format!("socket '{text}': {e}"))?;
        let Some(port) = port else {
            return Err(format!(
                "socket '{text}' has no port; write it like inet:127.0.0.1:8895"
            ));
        };
        return Ok(SocketSpec::Inet { host, port });
    }
    Err(format!(
        "'{text}' is not a milter socket; write inet:HOST:PORT or unix:/absolute/path"
    ))
}

/// Parses a file mode written in octal, like chmod's: `0660`, `660`. Only the
/// permission bits; a socket the daemon's own user cannot use is refused.
pub fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let mode =
        (!text.is_empty() && text.len() <= 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b)))
            .then(|| u32::from_str_radix(text, 8).ok())
            .flatten()
            .ok_or_else(|| format!("'{text}' is not an octal mode; write it like \"0660\""))?;
    if mode > 0o777 {
        return Err(format!(
            "'{text}' has bits besides the permissions; write it like \"0660\""
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "'{text}' does not let the daemon's own user read and write the socket"
        ));
    }
    Ok(mode)
}

/// Parses a static route entry: `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(crate) fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let text = text.trim();
    let (host, port) = split_host_port(text).map_err(|e| format!("host '{text}': {e}"))?;
    Ok(HostPort { host, port })
}

/// `HOST[:PORT]` with HOST an IPv4 address, a domain name or a bracketed IPv6 address.
/// The host comes back normalised (lower case, A-labels, IPv6 without brackets).
fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("'[' without a closing ']'".to_string());
        };
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("'{inside}' is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(parse_port(port)?),
                None => return Err(format!("unexpected '{after}' after ']'")),
            },
        };
        return Ok((ip.to_string(), port));
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, Some(parse_port(port)?)),
        Some(_) => {
            return Err("an IPv6 address must be written in brackets, like [::1]:8895".to_string())
        }
        None => (text, None),
    };
    if host.is_empty() {
        return Err("the host is missing".to_string());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((ip.to_string(), port));
    }
    Ok((normalise_domain(host)?, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("port 0 is not usable".to_string()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("'{text}' is not a port (1 to 65535)")),
    }
}

/// Lower case, A-labels (IDNA), without a trailing dot; refuses what cannot be a
/// domain name in DNS.
pub(crate) fn normalise_domain(text: &str) -> Result<String, String> {
    let domain = text.strip_suffix('.').unwrap_or(text);
    if domain.is_empty() {
        return Err("the domain is empty".to_string());
    }
    if domain.starts_with('[') {
        return Err(format!(
            "address literal '{domain}' is not supported; use a domain name"
        ));
    }
    let ascii = idna::domain_to_ascii(domain)
        .map_err(|_| format!("'{domain}' is not a valid domain name"))?;
    if ascii.len() > 253 {
        return Err(format!("domain '{domain}' is longer than 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(format!("domain '{domain}' has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!(
                "domain '{domain}' has a label longer than 63 characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("domain '{domain}' contains '{c}'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "domain '{domain}' has a label that starts or ends with '-'"
            ));
        }
    }
    Ok(ascii)
}

/// Checks a local part: a dot-atom (UTF-8 allowed, for SMTPUTF8) or a quoted string.
fn check_local(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("the local part (before '@') is empty".to_string());
    }
    if local.len() >= 2 && local.starts_with('"') && local.ends_with('"') {
        return match local.chars().find(|c| c.is_control()) {
            Some(c) => Err(format!("local part {local} contains {c:?}")),
            None => Ok(()),
        };
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || ATEXT_SPECIALS.contains(c)
            || c == '.'
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    };
    if let Some(c) = local.chars().find(|&c| !allowed(c)) {
        return Err(format!("local part '{local}' contains {c:?}"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(format!("local part '{local}' has a misplaced '.'"));
    }
    Ok(())
}

/// An intake address or the journal sender: `local@domain`. The local part is kept as
/// written (mailbox names may be case-sensitive); the domain is normalised.
pub(crate) fn normalise_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(format!("'{text}' is not an address (local@domain)"));
    };
    check_local(local).map_err(|e| format!("address '{text}': {e}"))?;
    if domain.is_empty() {
        return Err(format!("address '{text}' has no domain"));
    }
    let domain = normalise_domain(domain).map_err(|e| format!("address '{text}': {e}"))?;
    Ok(format!("{local}@{domain}"))
}

/// A local part as policies compare it: unquoted and lower case.
fn pattern_local(local: &str) -> Result<String, String> {
    check_local(local)?;
    let bare = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => local.to_string(),
    };
    Ok(bare.to_lowercase())
}

/// A policy criterion: `user@example.com`, `example.com` / `@example.com`,
/// `.example.com` or `postmaster@`.
pub(crate) fn parse_pattern(text: &str) -> Result<Pattern, String> {
    let text = text.trim();
    let wrap = |e: String| format!("pattern '{text}': {e}");
    if text.is_empty() {
        return Err("the pattern is empty".to_string());
    }
    if let Some(domain) = text.strip_prefix('@') {
        return normalise_domain(domain).map(Pattern::Domain).map_err(wrap);
    }
    if let Some(parent) = text.strip_prefix('.') {
        if parent.is_empty() || parent.starts_with('.') {
            return Err(wrap(
                "a sub-domain pattern is '.' and a domain, like .example.com".to_string(),
            ));
        }
        return normalise_domain(parent)
            .map(Pattern::SubDomain)
            .map_err(wrap);
    }
    match text.rsplit_once('@') {
        Some((local, "")) => pattern_local(local).map(Pattern::LocalPart).map_err(wrap),
        Some((local, domain)) => Ok(Pattern::Address {
            local: pattern_local(local).map_err(wrap)?,
            domain: normalise_domain(domain).map_err(wrap)?,
        }),
        None => normalise_domain(text).map(Pattern::Domain).map_err(wrap),
    }
}

/// One entry of `delivery.tls.match`: `nexthop`, `dot-nexthop`, `hostname`, a host
/// name or IP address, or `.domain` for any name below it. A word without a dot is
/// refused (a typo of a keyword would otherwise silently become a host name), and so is
/// a suffix of a single label (`.com` would accept any certificate under the TLD).
pub(crate) fn parse_cert_match(text: &str) -> Result<CertMatch, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    match lower.as_str() {
        "nexthop" => return Ok(CertMatch::Nexthop),
        "dot-nexthop" => return Ok(CertMatch::DotNexthop),
        "hostname" => return Ok(CertMatch::Hostname),
        "" => return Err("the entry is empty".to_string()),
        _ => {}
    }
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = unbracketed.parse::<std::net::IpAddr>() {
        return Ok(CertMatch::Name(ip.to_string()));
    }
    if let Some(parent) = text.strip_prefix('.') {
        let domain = normalise_domain(parent).map_err(|e| format!("'{text}': {e}"))?;
        if !domain.contains('.') {
            return Err(format!(
                "'{text}' is too broad: it would accept a certificate for any name under a top-level domain"
            ));
        }
        return Ok(CertMatch::Under(domain));
    }
    let name = normalise_domain(text).map_err(|e| format!("'{text}': {e}"))?;
    if !name.contains('.') {
        return Err(format!(
            "'{text}' is neither nexthop, dot-nexthop, hostname, a host name with a dot, nor .domain"
        ));
    }
    Ok(CertMatch::Name(name))
}

/// A header field name (RFC 5322): printable ASCII without spaces or ':'.
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the header name is empty".to_string());
    }
    match name.chars().find(|c| !matches!(c, '!'..='~') || *c == ':') {
        Some(c) => Err(format!(
            "header name '{name}' contains {c:?}; use printable ASCII without spaces or ':'"
        )),
        None => Ok(()),
    }
}

/// An address (`192.0.2.7`, `2001:db8::1`, a host route) or a CIDR block
/// (`10.0.0.0/8`, `2001:db8::/32`), as in Postfix's `mynetworks`; an IPv6 address may
/// be written in brackets (`[2001:db8::]/32`), as Postfix writes it. Host bits set
/// below the prefix are refused: `10.1.2.3/8` is more likely a typo than a wish.
pub(crate) fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let trimmed = text.trim();
    let (address, prefix) = match trimmed.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (trimmed, None),
    };
    let address = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let ip: std::net::IpAddr = address.parse().map_err(|_| {
        format!("'{trimmed}' is not an IP address or CIDR block (like 10.0.0.0/8 or 2001:db8::/32)")
    })?;
    let ip = ip.to_canonical();
    let network = match prefix {
        None => ipnet::IpNet::from(ip),
        Some(p) => {
            let len: u8 = p
                .parse()
                .map_err(|_| format!("'{trimmed}': the prefix length '{p}' is not a number"))?;
            ipnet::IpNet::new(ip, len).map_err(|_| {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                format!("'{trimmed}': the prefix length {len} is over {max}")
            })?
        }
    };
    if network.trunc() != network {
        return Err(format!(
            "'{trimmed}' has host bits set below /{}; did you mean {}?",
            network.prefix_len(),
            network.trunc()
        ));
    }
    Ok(network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_like_mynetworks() {
        let ok = |t: &str| parse_network(t).map(|n| n.to_string());
        assert_eq!(ok("10.0.0.0/8").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(ok(" 192.0.2.7 ").as_deref(), Ok("192.0.2.7/32"));
        assert_eq!(ok("[2001:db8::]/32").as_deref(), Ok("2001:db8::/32"));
        assert_eq!(ok("2001:db8::1").as_deref(), Ok("2001:db8::1/128"));
        assert_eq!(ok("::ffff:10.0.0.0/8").as_deref(), Ok("10.0.0.0/8"));
        for bad in ["10.0.0.0/33", "10.1.2.3/8", "example.com", "10.0.0.0/x", ""] {
            assert!(parse_network(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sockets() {
        assert_eq!(
            parse_socket_spec("inet:127.0.0.1:8895"),
            Ok(SocketSpec::Inet {
                host: "127.0.0.1".into(),
                port: 8895
            })
        );
        assert_eq!(
            parse_socket_spec("inet:[::1]:8895"),
            Ok(SocketSpec::Inet {
                host: "::1".into(),
                port: 8895
            })
        );
        assert_eq!(
            parse_socket_spec("inet:LocalHost:10025"),
            Ok(SocketSpec::Inet {
                host: "localhost".into(),
                port: 10025
            })
        );
        assert_eq!(
            parse_socket_spec("unix:/run/tdc-milter/milter.sock"),
            Ok(SocketSpec::Unix("/run/tdc-milter/milter.sock".into()))
        );
    }

    #[test]
    fn bad_sockets() {
        for (spec, needle) in [
            ("127.0.0.1:8895", "not a milter socket"),
            ("tcp:127.0.0.1:8895", "not a milter socket"),
            ("inet:127.0.0.1", "has no port"),
            ("inet:127.0.0.1:0", "port 0"),
            ("inet:127.0.0.1:99999", "not a port"),
            ("inet:127.0.0.1:http", "not a port"),
            ("inet::8895", "host is missing"),
            ("inet:::1:8895", "brackets"),
            ("inet:[::1:8895", "closing"),
            ("inet:[fe80::zz]:8895", "not an IPv6 address"),
            ("unix:milter.sock", "absolute path"),
            ("", "not a milter socket"),
        ] {
            let err = parse_socket_spec(spec).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            parse_host_port("127.0.0.1:2526"),
            Ok(HostPort {
                host: "127.0.0.1".into(),
                port: Some(2526)
            })
        );
        assert_eq!(
            parse_host_port("Relay.Example"),
            Ok(HostPort {
                host: "relay.example".into(),
                port: None
            })
        );
        assert_eq!(
            parse_host_port("[2001:DB8::1]:25"),
            Ok(HostPort {
                host: "2001:db8::1".into(),
                port: Some(25)
            })
        );
        assert_eq!(
            parse_host_port("[::1]"),
            Ok(HostPort {
                host: "::1".into(),
                port: None
            })
        );
        assert!(parse_host_port("::1").is_err());
        assert!(parse_host_port("relay.example:").is_err());
        assert!(parse_host_port("bad host:25").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(normalise_domain("Example.COM."), Ok("example.com".into()));
        assert_eq!(
            normalise_domain("bücher.example"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(
            normalise_domain("_dmarc.example"),
            Ok("_dmarc.example".into())
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.example",
            "a b.example",
            "a/b",
            "[192.0.2.1]",
        ] {
            assert!(normalise_domain(bad).is_err(), "{bad}");
        }
        assert!(normalise_domain(&"a".repeat(64)).is_err());
    }

    #[test]
    fn addresses_keep_their_local_part() {
        assert_eq!(
            normalise_address("5F1c2e@Intake.Example.NET"),
            Ok("5F1c2e@intake.example.net".into())
        );
        assert_eq!(
            normalise_address("tdc@Bücher.example"),
            Ok("tdc@xn--bcher-kva.example".into())
        );
        assert_eq!(
            normalise_address("\"odd one\"@example.com"),
            Ok("\"odd one\"@example.com".into())
        );
        for bad in [
            "intake.example.net",
            "@intake.example.net",
            "x@",
            "a b@example.com",
            ".a@example.com",
            "a..b@example.com",
            "<a@example.com>",
            "a@exa mple.com",
        ] {
            assert!(normalise_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("CTO@Example.com"),
            Ok(Pattern::Address {
                local: "cto".into(),
                domain: "example.com".into()
            })
        );
        assert_eq!(
            parse_pattern("Example.com"),
            Ok(Pattern::Domain("example.com".into()))
        );
        assert_eq!(
            parse_pattern("@example.com"),
            Ok(Pattern::Domain("example.com".into()))
        );
        assert_eq!(
            parse_pattern(".Lab.Example.com"),
            Ok(Pattern::SubDomain("lab.example.com".into()))
        );
        assert_eq!(
            parse_pattern("PostMaster@"),
            Ok(Pattern::LocalPart("postmaster".into()))
        );
        assert_eq!(
            parse_pattern(".bücher.example"),
            Ok(Pattern::SubDomain("xn--bcher-kva.example".into()))
        );
        assert_eq!(
            parse_pattern("\"John Doe\"@example.com"),
            Ok(Pattern::Address {
                local: "john doe".into(),
                domain: "example.com".into()
            })
        );
        for bad in [
            "",
            "@",
            ".",
            "..example.com",
            "@@example.com",
            "a b@example.com",
            "x@y@",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_match_entries() {
        for (text, want) in [
            ("nexthop", CertMatch::Nexthop),
            (" Dot-Nexthop ", CertMatch::DotNexthop),
            ("hostname", CertMatch::Hostname),
            (
                "MX.US.etd.cisco.com.",
                CertMatch::Name("mx.us.etd.cisco.com".into()),
            ),
            (".Cisco.COM", CertMatch::Under("cisco.com".into())),
            ("192.0.2.7", CertMatch::Name("192.0.2.7".into())),
            ("[2001:db8::25]", CertMatch::Name("2001:db8::25".into())),
        ] {
            assert_eq!(parse_cert_match(text), Ok(want), "{text}");
        }
        for (text, why) in [
            ("", "empty"),
            ("nexthopp", "neither nexthop"),
            (".com", "too broad"),
            ("..cisco.com", "empty label"),
            ("bad name.example", "contains ' '"),
        ] {
            let err = parse_cert_match(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn header_names() {
        assert!(check_header_name("X-IronPort-RemoteIP").is_ok());
        assert!(check_header_name("X-Spam-Flag").is_ok());
        assert!(check_header_name("").is_err());
        assert!(check_header_name("X Spam").is_err());
        assert!(check_header_name("X-Spam:").is_err());
        assert!(check_header_name("X-Späm").is_err());
    }
}
