//! The outbound address policy (`[egress]`): which addresses a webhook request may connect to.
//!
//! With `deny_private_addresses` on, a request may not reach loopback, private, link-local,
//! shared (CGNAT), unique-local, multicast, broadcast, documentation and other special-purpose
//! addresses ([`classify`]), unless one of `allow_networks` holds the address. It is checked
//! twice, on the address itself, never on a host name:
//! - a URL whose host is an IP literal (including the decimal, hex and octal forms the `url`
//!   crate turns into IPv4) is refused when the config is loaded
//!   ([`crate::config::Config::load`]): reqwest connects to a literal without resolving it;
//! - every other host goes through [`GuardedResolver`], the webhook client's only way from a
//!   name to addresses: it resolves with the system resolver and hands the connector only the
//!   addresses the policy allows. The address connected to is one that was checked, so a
//!   name that changes its answer between two lookups (DNS rebinding) gains nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The config key that turns the policy on, named in every refusal.
pub const DENY_KEY: &str = "egress.deny_private_addresses";
/// The config key listing the exceptions.
pub const ALLOW_KEY: &str = "egress.allow_networks";

/// What kind of special-purpose address an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0.0.0.0/8`, `::`: connecting to 0.0.0.0 reaches this host on Linux.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// RFC 6598 carrier-grade NAT, `100.64.0.0/10`.
    Shared,
    /// `169.254.0.0/16` (cloud metadata services live at 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`, and the deprecated site-local `fec0::/10`.
    UniqueLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// TEST-NET-1/2/3, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `192.0.0.0/24` (IETF protocol assignments), `240.0.0.0/4`, `100::/64` (discard).
    Reserved,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Loopback => "loopback",
            Kind::Private => "private",
            Kind::Shared => "carrier-grade NAT",
            Kind::LinkLocal => "link-local",
            Kind::UniqueLocal => "unique-local",
            Kind::Multicast => "multicast",
            Kind::Broadcast => "broadcast",
            Kind::Documentation => "documentation",
            Kind::Benchmarking => "benchmarking",
            Kind::Reserved => "reserved",
        }
    }
}

/// How an IPv6 address carries the IPv4 address it was classified by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the socket reaches a.b.c.d.
    Mapped,
    /// `::a.b.c.d` (deprecated IPv4-compatible).
    Compatible,
    /// `64:ff9b::a.b.c.d`, `64:ff9b:1::/48`: a NAT64 gateway forwards to a.b.c.d.
    Nat64,
}

/// A special-purpose address: its kind, and how it embeds an IPv4 address if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub kind: Kind,
    pub embedded: Option<Embedding>,
}

impl fmt::Display for Class {
    /// "a loopback address", "an IPv4-mapped link-local address".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let via = match self.embedded {
            None => "",
            Some(Embedding::Mapped) => "IPv4-mapped ",
            Some(Embedding::Compatible) => "IPv4-compatible ",
            Some(Embedding::Nat64) => "NAT64 ",
        };
        let words = format!("{via}{} address", self.kind.describe());
        let article = if words.starts_with(['a', 'e', 'i', 'o', 'u', 'I']) {
            "an"
        } else {
            "a"
        };
        write!(f, "{article} {words}")
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 special-purpose ranges (IANA's registry, less those meant to be reached: none of the
/// globally reachable ones are here). First match wins: broadcast sits inside 240/4.
const V4_RANGES: &[(Ipv4Net, Kind)] = &[
    (v4(0, 0, 0, 0, 8), Kind::Unspecified),
    (v4(127, 0, 0, 0, 8), Kind::Loopback),
    (v4(10, 0, 0, 0, 8), Kind::Private),
    (v4(172, 16, 0, 0, 12), Kind::Private),
    (v4(192, 168, 0, 0, 16), Kind::Private),
    (v4(100, 64, 0, 0, 10), Kind::Shared),
    (v4(169, 254, 0, 0, 16), Kind::LinkLocal),
    (v4(224, 0, 0, 0, 4), Kind::Multicast),
    (v4(255, 255, 255, 255, 32), Kind::Broadcast),
    (v4(192, 0, 2, 0, 24), Kind::Documentation),
    (v4(198, 51, 100, 0, 24), Kind::Documentation),
    (v4(203, 0, 113, 0, 24), Kind::Documentation),
    (v4(198, 18, 0, 0, 15), Kind::Benchmarking),
    (v4(192, 0, 0, 0, 24), Kind::Reserved),
    (v4(240, 0, 0, 0, 4), Kind::Reserved),
];

/// IPv6 ranges that are special in themselves (those embedding IPv4 are in [`classify_v6`]).
const V6_RANGES: &[(Ipv6Net, Kind)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), Kind::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), Kind::Loopback),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), Kind::LinkLocal),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), Kind::UniqueLocal),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), Kind::UniqueLocal),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), Kind::Multicast),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        Kind::Documentation,
    ),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), Kind::Documentation),
    (v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), Kind::Benchmarking),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), Kind::Reserved),
];

/// IPv6 prefixes whose last 32 bits are an IPv4 address the connection ends up at.
const V6_EMBEDDING: &[(Ipv6Net, Embedding)] = &[
    (v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), Embedding::Mapped),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), Embedding::Compatible),
    (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), Embedding::Nat64),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), Embedding::Nat64),
];

/// The special-purpose class of `ip`, or `None` for an ordinary (globally reachable) address.
pub fn classify(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip).map(|kind| Class {
            kind,
            embedded: None,
        }),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Kind> {
    V4_RANGES
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, kind)| kind)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    if let Some(&(_, kind)) = V6_RANGES.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(Class {
            kind,
            embedded: None,
        });
    }
    let (_, embedding) = V6_EMBEDDING.iter().find(|(net, _)| net.contains(&ip))?;
    let [.., a, b, c, d] = ip.octets();
    classify_v4(Ipv4Addr::new(a, b, c, d)).map(|kind| Class {
        kind,
        embedded: Some(*embedding),
    })
}

/// `[egress]` in the config, validated.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Refuse special-purpose addresses ([`classify`]). Off by default.
    pub deny_private_addresses: bool,
    /// Exceptions to the refusal: an address in one of these may be reached.
    pub allow_networks: Vec<IpNet>,
}

impl Policy {
    /// Why `ip` may not be connected to, or `None` when it may.
    pub fn denies(&self, ip: IpAddr) -> Option<Class> {
        if !self.deny_private_addresses {
            return None;
        }
        let class = classify(ip)?;
        // An allowed 127.0.0.0/8 also allows ::ffff:127.0.0.1, which is the same socket.
        let allowed = |ip: IpAddr| self.allow_networks.iter().any(|n| n.contains(&ip));
        if allowed(ip) || allowed(ip.to_canonical()) {
            return None;
        }
        Some(class)
    }
}

/// A connection the policy refused: the reason the row's `error_message` and the log give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The host name that resolved to `addresses`; `None` for an IP literal.
    pub host: Option<String>,
    /// Every address found, each with why it is refused (all of them are).
    pub addresses: Vec<(IpAddr, Class)>,
}

/// How many refused addresses a message lists.
const LISTED: usize = 4;

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.addresses.as_slice()) {
            (None, [(ip, class)]) => write!(f, "{ip} is {class}")?,
            (Some(host), [(ip, class)]) => write!(f, "{host} resolves to {ip}, {class},")?,
            (host, addresses) => {
                match host {
                    Some(host) => write!(f, "{host} resolves to ")?,
                    None => f.write_str("addresses ")?,
                }
                for (i, (ip, class)) in addresses.iter().take(LISTED).enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{ip} ({})", class.kind.describe())?;
                }
                if addresses.len() > LISTED {
                    write!(f, " and {} more", addresses.len() - LISTED)?;
                }
                f.write_str(", each refused,")?;
            }
        }
        write!(f, " and {DENY_KEY} is on")
    }
}

impl std::error::Error for Denied {}

/// The webhook client's resolver while the policy is on: the system resolver (getaddrinfo,
/// as reqwest's own), less the addresses the policy refuses. When none is left the lookup
/// fails with [`Denied`] and no connection is attempted.
pub struct GuardedResolver {
    policy: Arc<Policy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<Policy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        // The name comes from a URL the `url` crate parsed: ASCII (IDNA), with no spaces or
        // control characters, so it is safe in a log line.
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let (allowed, refused) = screen(&policy, found);
            if allowed.is_empty() && !refused.is_empty() {
                return Err(Box::new(Denied {
                    host: Some(host),
                    addresses: refused,
                }) as _);
            }
            if !refused.is_empty() {
                tracing::debug!(
                    host,
                    refused = refused.len(),
                    "egress policy: some addresses of the host skipped"
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Splits resolved addresses into those the policy allows and those it refuses (with why).
fn screen(
    policy: &Policy,
    found: impl IntoIterator<Item = SocketAddr>,
) -> (Vec<SocketAddr>, Vec<(IpAddr, Class)>) {
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for addr in found {
        match policy.denies(addr.ip()) {
            None => allowed.push(addr),
            Some(class) => {
                if !refused.iter().any(|(ip, _)| *ip == addr.ip()) {
                    refused.push((addr.ip(), class));
                }
            }
        }
    }
    (allowed, refused)
}

/// The policy's refusal of a URL whose host is an IP literal (checked at config load: such
/// a host never reaches the resolver). Host names are left to [`GuardedResolver`].
pub fn check_literal(policy: &Policy, url: &url::Url) -> Result<(), Denied> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(_)) | None => return Ok(()),
    };
    match policy.denies(ip) {
        None => Ok(()),
        Some(class) => Err(Denied {
            host: None,
            addresses: vec![(ip, class)],
        }),
    }
}

/// Parses one `allow_networks` entry: a CIDR (`10.1.0.0/16`) or a single address.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!(
                "{s:?} is not a network: use CIDR notation (10.1.0.0/16, fd00::/8) or one address"
            )
        })?,
    };
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has bits set past its prefix length; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<Class> {
        classify(s.parse().unwrap())
    }

    /// An address in (and at the edges of) every special IPv4 range, with its kind.
    const SPECIAL_V4: &[(&str, Kind)] = &[
        ("0.0.0.0", Kind::Unspecified),
        ("0.255.255.255", Kind::Unspecified),
        ("127.0.0.1", Kind::Loopback),
        ("127.255.255.254", Kind::Loopback),
        ("10.0.0.1", Kind::Private),
        ("10.255.255.255", Kind::Private),
        ("172.16.0.1", Kind::Private),
        ("172.31.255.255", Kind::Private),
        ("192.168.1.1", Kind::Private),
        ("100.64.0.1", Kind::Shared),
        ("100.127.255.255", Kind::Shared),
        ("169.254.169.254", Kind::LinkLocal),
        ("169.254.0.1", Kind::LinkLocal),
        ("224.0.0.1", Kind::Multicast),
        ("239.255.255.250", Kind::Multicast),
        ("255.255.255.255", Kind::Broadcast),
        ("192.0.2.1", Kind::Documentation),
        ("198.51.100.7", Kind::Documentation),
        ("203.0.113.9", Kind::Documentation),
        ("198.18.0.1", Kind::Benchmarking),
        ("198.19.255.255", Kind::Benchmarking),
        ("192.0.0.8", Kind::Reserved),
        ("240.0.0.1", Kind::Reserved),
        ("255.255.255.254", Kind::Reserved),
    ];

    #[test]
    fn every_special_range_is_classified() {
        let v6 = [
            ("::", Kind::Unspecified),
            ("::1", Kind::Loopback),
            ("fe80::1", Kind::LinkLocal),
            ("febf:ffff::1", Kind::LinkLocal),
            ("fc00::1", Kind::UniqueLocal),
            ("fd12:3456:789a::1", Kind::UniqueLocal),
            ("fec0::1", Kind::UniqueLocal),
            ("ff02::1", Kind::Multicast),
            ("2001:db8::1", Kind::Documentation),
            ("3fff::1", Kind::Documentation),
            ("2001:2::1", Kind::Benchmarking),
            ("100::1", Kind::Reserved),
        ];
        for &(ip, want) in SPECIAL_V4.iter().chain(&v6) {
            assert_eq!(
                class(ip),
                Some(Class {
                    kind: want,
                    embedded: None
                }),
                "{ip}"
            );
        }
    }

    #[test]
    fn ordinary_addresses_and_the_edges_next_to_special_ranges_are_not() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "223.255.255.255",
            "192.0.1.255",
            "192.0.3.0",
            "198.17.255.255",
            "198.20.0.0",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2001:db9::1",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_special_ipv4_addresses_are_classified_by_the_ipv4_address() {
        let embedded = |ip: &str, kind, via| {
            assert_eq!(
                class(ip),
                Some(Class {
                    kind,
                    embedded: Some(via)
                }),
                "{ip}"
            )
        };
        for &(v4, kind) in SPECIAL_V4 {
            embedded(&format!("::ffff:{v4}"), kind, Embedding::Mapped);
            embedded(&format!("64:ff9b::{v4}"), kind, Embedding::Nat64);
            embedded(&format!("64:ff9b:1::{v4}"), kind, Embedding::Nat64);
            // ::0.0.0.0 and ::0.0.0.1 are :: and ::1 themselves.
            if kind != Kind::Unspecified {
                embedded(&format!("::{v4}"), kind, Embedding::Compatible);
            }
        }
        // Written in hex, as getaddrinfo may hand it back.
        embedded("::ffff:7f00:1", Kind::Loopback, Embedding::Mapped);
        embedded("::ffff:a9fe:a9fe", Kind::LinkLocal, Embedding::Mapped);
    }

    #[test]
    fn the_policy_is_off_by_default_and_the_allow_list_makes_exceptions() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(Policy::default().denies(ip("169.254.169.254")), None);
        let on = Policy {
            deny_private_addresses: true,
            allow_networks: vec![parse_network("127.0.0.0/8").unwrap()],
        };
        assert_eq!(on.denies(ip("127.0.0.1")), None);
        assert_eq!(on.denies(ip("::ffff:127.0.0.9")), None, "the same socket");
        assert_eq!(on.denies(ip("::1")).map(|c| c.kind), Some(Kind::Loopback));
        assert_eq!(
            on.denies(ip("169.254.169.254")).map(|c| c.kind),
            Some(Kind::LinkLocal)
        );
        assert_eq!(on.denies(ip("93.184.215.14")), None);
    }

    #[test]
    fn resolved_addresses_are_screened_one_by_one() {
        let on = Policy {
            deny_private_addresses: true,
            allow_networks: vec![],
        };
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (allowed, refused) = screen(
            &on,
            [sa("127.0.0.1:0"), sa("93.184.215.14:0"), sa("127.0.0.1:0")],
        );
        assert_eq!(allowed, [sa("93.184.215.14:0")]);
        assert_eq!(refused.len(), 1, "duplicates are listed once");
    }

    #[test]
    fn refusals_say_which_address_what_it_is_and_which_key() {
        let on = Policy {
            deny_private_addresses: true,
            allow_networks: vec![],
        };
        let url = |s: &str| url::Url::parse(s).unwrap();
        // The `url` crate turns decimal, hex and octal hosts into IPv4 addresses.
        for (u, ip) in [
            ("http://169.254.169.254/latest", "169.254.169.254"),
            ("http://2852039166/", "169.254.169.254"),
            ("http://0xa9fea9fe/", "169.254.169.254"),
            ("http://0251.0376.0251.0376/", "169.254.169.254"),
            ("http://2130706433/", "127.0.0.1"),
            ("http://127.1/", "127.0.0.1"),
            ("http://0/", "0.0.0.0"),
        ] {
            let err = check_literal(&on, &url(u)).expect_err(u).to_string();
            assert!(err.starts_with(&format!("{ip} is a")), "{u}: {err}");
            assert!(
                err.ends_with(" and egress.deny_private_addresses is on"),
                "{err}"
            );
        }
        assert_eq!(
            check_literal(&on, &url("http://[::ffff:a9fe:a9fe]/"))
                .unwrap_err()
                .to_string(),
            "::ffff:169.254.169.254 is an IPv4-mapped link-local address and \
             egress.deny_private_addresses is on"
        );
        assert!(
            check_literal(&on, &url("http://localhost/")).is_ok(),
            "left to the resolver"
        );
        assert!(check_literal(&on, &url("https://93.184.215.14/")).is_ok());
        assert!(check_literal(&Policy::default(), &url("http://127.0.0.1/")).is_ok());

        let one = Denied {
            host: Some("localhost".into()),
            addresses: vec![("127.0.0.1".parse().unwrap(), class("127.0.0.1").unwrap())],
        };
        assert_eq!(
            one.to_string(),
            "localhost resolves to 127.0.0.1, a loopback address, and \
             egress.deny_private_addresses is on"
        );
        let many = Denied {
            host: Some("internal.example".into()),
            addresses: ["10.0.0.1", "::1", "fd00::1", "10.0.0.2", "10.0.0.3"]
                .iter()
                .map(|s| (s.parse().unwrap(), class(s).unwrap()))
                .collect(),
        };
        assert_eq!(
            many.to_string(),
            "internal.example resolves to 10.0.0.1 (private), ::1 (loopback), \
             fd00::1 (unique-local), 10.0.0.2 (private) and 1 more, each refused, \
             and egress.deny_private_addresses is on"
        );
    }

    #[test]
    fn allow_entries_are_networks_or_addresses() {
        assert_eq!(
            parse_network("10.1.0.0/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            parse_network("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(parse_network("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_network("10.1.2.3/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!(parse_network("localhost").is_err());
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("").is_err());
    }
}
