//! Entry pools: the VIP pool (IPv4/IPv6 ranges and CIDRs), the port pool,
//! the hostname template, and the allocator that hands out the lowest entry
//! that no lane holds and no quarantine protects. Control plane only: pure,
//! synchronous functions called by the lane store with its lock held; the
//! data plane sees entries only through a compiled snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An inclusive range of addresses of one family, stored as integers
/// (IPv4 in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    first: u128,
    last: u128,
    v6: bool,
}

impl IpRange {
    /// Parses `"a-b"` (inclusive), `"net/prefix"` or a single address.
    ///
    /// A CIDR leaves out the addresses a VIP must not take: for IPv4 the
    /// network and broadcast addresses (prefixes up to /30), for IPv6 the
    /// Subnet-Router anycast address, the first (prefixes up to /126).
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let text = text.trim();
        if let Some((addr, prefix)) = text.split_once('/') {
            let addr: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("{text:?}: {:?} is not an IP address", addr.trim()))?;
            let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u32 = prefix
                .trim()
                .parse()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?;
            let value = to_int(addr);
            let host_bits = bits - prefix;
            let host_mask: u128 = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            if value & host_mask != 0 {
                let net = from_int(value & !host_mask, addr.is_ipv6());
                return Err(format!(
                    "{text:?} has host bits set; did you mean \"{net}/{prefix}\"?"
                ));
            }
            let (mut first, mut last) = (value, value | host_mask);
            if addr.is_ipv4() && host_bits >= 2 {
                first += 1;
                last -= 1;
            } else if addr.is_ipv6() && host_bits >= 2 {
                first += 1;
            }
            return Ok(IpRange {
                first,
                last,
                v6: addr.is_ipv6(),
            });
        }
        let (a, b) = text.split_once('-').unwrap_or((text, text));
        let parse = |s: &str| -> Result<IpAddr, String> {
            s.trim()
                .parse()
                .map_err(|_| format!("{text:?}: {:?} is not an IP address", s.trim()))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a.is_ipv4() != b.is_ipv4() {
            return Err(format!(
                "{text:?} mixes IPv4 and IPv6; a range stays in one family"
            ));
        }
        if to_int(a) > to_int(b) {
            return Err(format!("{text:?} ends before it starts"));
        }
        Ok(IpRange {
            first: to_int(a),
            last: to_int(b),
            v6: a.is_ipv6(),
        })
    }

    pub fn first(&self) -> IpAddr {
        from_int(self.first, self.v6)
    }

    pub fn last(&self) -> IpAddr {
        from_int(self.last, self.v6)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.v6 && (self.first..=self.last).contains(&to_int(ip))
    }

    /// How many addresses the range holds.
    pub fn len(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }

    /// Never true: a range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn overlaps(&self, other: &IpRange) -> bool {
        self.v6 == other.v6 && self.first <= other.last && other.first <= self.last
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_int(value: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        // Only IPv4 ranges reach here, so the value fits in 32 bits.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX)))
    }
}

/// The VIP pool: non-overlapping ranges, lowest address first (IPv4 before
/// IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipPool {
    /// Sorted by first address.
    ranges: Vec<IpRange>,
    /// The pool as configured, for messages.
    text: String,
}

impl VipPool {
    /// Parses the configured entries. On failure returns every problem with
    /// the index of the entry it belongs to, so the caller can point at its
    /// line.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<VipPool, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        let mut parsed: Vec<(usize, IpRange)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match IpRange::parse(item.as_ref()) {
                Ok(r) => parsed.push((i, r)),
                Err(e) => errors.push((i, e)),
            }
        }
        for (at, (i, r)) in parsed.iter().enumerate() {
            if let Some((j, _)) = parsed[..at].iter().find(|(_, o)| o.overlaps(r)) {
                errors.push((
                    *i,
                    format!(
                        "{:?} overlaps {:?}; every VIP must belong to one entry only",
                        items[*i].as_ref().trim(),
                        items[*j].as_ref().trim()
                    ),
                ));
            }
        }
        if items.is_empty() {
            errors.push((0, "is empty; leave it out to allocate no VIPs".to_string()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let text = items
            .iter()
            .map(|s| s.as_ref().trim())
            .collect::<Vec<_>>()
            .join(", ");
        let mut ranges: Vec<IpRange> = parsed.into_iter().map(|(_, r)| r).collect();
        ranges.sort_by_key(|r| (r.v6, r.first));
        Ok(VipPool { ranges, text })
    }

    pub fn ranges(&self) -> &[IpRange] {
        &self.ranges
    }

    /// Every address of the pool, lowest first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ranges
            .iter()
            .flat_map(|r| (r.first..=r.last).map(move |n| u128_to_ip(n, r.v6)))
    }

    /// How many addresses the pool holds.
    pub fn size(&self) -> u128 {
        self.ranges.iter().map(IpRange::len).sum()
    }
}

fn u128_to_ip(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(n.into())
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

impl fmt::Display for VipPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The port pool: one inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPool {
    pub first: u16,
    pub last: u16,
}

impl PortPool {
    /// Parses `"20000-20999"` or a single port.
    pub fn parse(text: &str) -> Result<PortPool, String> {
        let text = text.trim();
        let (a, b) = text.split_once('-').unwrap_or((text, text));
        let parse = |s: &str| -> Result<u16, String> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{text:?}: {:?} is not a port (1-65535)", s.trim()))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("{text:?} ends before it starts"));
        }
        Ok(PortPool { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A pool entries are drawn from, lowest first.
pub trait Pool: fmt::Display {
    type Entry: Copy + Ord + fmt::Display;
    /// `"vip"` or `"port"`: the API field and the word in messages.
    const KIND: &'static str;
    fn contains(&self, entry: Self::Entry) -> bool;
    /// The lowest entry for which `taken` is false.
    fn first_free(&self, taken: &dyn Fn(Self::Entry) -> bool) -> Option<Self::Entry>;
}

impl Pool for VipPool {
    type Entry = IpAddr;
    const KIND: &'static str = "vip";

    fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    fn first_free(&self, taken: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
        // Steps at most once per taken address, so huge IPv6 ranges cost
        // nothing more than small ones.
        self.ranges.iter().find_map(|r| {
            let mut at = r.first;
            loop {
                let ip = from_int(at, r.v6);
                if !taken(ip) {
                    return Some(ip);
                }
                if at == r.last {
                    return None;
                }
                at += 1;
            }
        })
    }
}

impl Pool for PortPool {
    type Entry = u16;
    const KIND: &'static str = "port";

    fn contains(&self, port: u16) -> bool {
        PortPool::contains(self, port)
    }

    fn first_free(&self, taken: &dyn Fn(u16) -> bool) -> Option<u16> {
        (self.first..=self.last).find(|p| !taken(*p))
    }
}

/// The hostname entry: a template with `{lane}` and `{domain}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameTemplate(String);

impl HostnameTemplate {
    /// Accepts a template holding `{lane}` once or more, `{domain}`
    /// optionally, and otherwise DNS characters.
    pub fn parse(text: &str, domain: &str) -> Result<HostnameTemplate, String> {
        let template = text.trim().to_ascii_lowercase();
        if !template.contains("{lane}") {
            return Err(format!(
                "{text:?} must contain \"{{lane}}\" so every lane gets its own hostname"
            ));
        }
        let rest = template.replace("{lane}", "").replace("{domain}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "{text:?}: only \"{{lane}}\" and \"{{domain}}\" can be used"
            ));
        }
        let t = HostnameTemplate(template);
        let sample = t.render("a-1", domain);
        if !crate::config::is_hostname(&sample) {
            return Err(format!(
                "{text:?} does not make a valid hostname (for lane \"a-1\": {sample:?})"
            ));
        }
        Ok(t)
    }

    pub fn render(&self, lane: &str, domain: &str) -> String {
        self.0.replace("{lane}", lane).replace("{domain}", domain)
    }
}

impl Default for HostnameTemplate {
    fn default() -> Self {
        HostnameTemplate("{lane}.{domain}".to_string())
    }
}

impl fmt::Display for HostnameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything the lane store needs to hand out entries, from `[lanes]`.
#[derive(Debug, Clone)]
pub struct Pools {
    pub vip: Option<VipPool>,
    pub port: Option<PortPool>,
    pub hostname: HostnameTemplate,
    pub domain: String,
    /// How long a released VIP/port stays reserved for the lane that held it.
    pub quarantine: Duration,
    /// The lease of a lane created without `ttl` (none: no lease).
    pub default_ttl: Option<Duration>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            vip: None,
            port: None,
            hostname: HostnameTemplate::default(),
            domain: "lanes.test".to_string(),
            quarantine: Duration::from_secs(600),
            default_ttl: None,
        }
    }
}

impl Pools {
    pub fn from_config(c: &crate::config::LanesConfig) -> Pools {
        Pools {
            vip: c.vip_pool.clone(),
            port: c.port_pool,
            hostname: c.hostname.clone(),
            domain: c.domain.clone(),
            quarantine: c.release_quarantine,
            default_ttl: c.default_ttl,
        }
    }

    pub fn hostname(&self, lane: &str) -> String {
        self.hostname.render(lane, &self.domain)
    }
}

/// Who keeps an entry from being handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A live lane holds it.
    Lane(String),
    /// Released by `lane`; reserved for it until `until` (unix seconds).
    Quarantined { lane: String, until: u64 },
}

/// Why an entry could not be allocated. Messages name the pool or entry and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// No free entry (409).
    #[error("{kind} pool {pool} is exhausted ({used} entries in use or in quarantine); delete lanes or widen [lanes] {kind}_pool")]
    Exhausted {
        kind: &'static str,
        pool: String,
        used: usize,
    },
    /// The requested entry belongs to another lane (409).
    #[error("{kind} {entry} is taken by lane {lane:?}; ask for another or leave \"{kind}\" out to get a free one")]
    Taken {
        kind: &'static str,
        entry: String,
        lane: String,
    },
    /// The requested entry was released by another lane and is still in
    /// quarantine (409).
    #[error("{kind} {entry} was released by lane {lane:?} and is in quarantine until {until} (stale hosts files may still point at it); ask for another or leave \"{kind}\" out")]
    Quarantined {
        kind: &'static str,
        entry: String,
        lane: String,
        until: String,
    },
    /// The requested entry is not in the pool (400).
    #[error("{kind} {entry} is outside the {kind} pool {pool}")]
    OutsidePool {
        kind: &'static str,
        entry: String,
        pool: String,
    },
    /// An entry was requested but no pool is configured (400).
    #[error("no {kind} pool is configured ([lanes] {kind}_pool); leave \"{kind}\" out")]
    NoPool { kind: &'static str },
}

impl AllocationError {
    /// True for a clash with the current state (409), false for bad input (400).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            AllocationError::Exhausted { .. }
                | AllocationError::Taken { .. }
                | AllocationError::Quarantined { .. }
        )
    }
}

/// Chooses an entry of `pool` for `lane`.
///
/// - `requested`: that entry, if it is in the pool and neither held by
///   another lane nor quarantined for another lane;
/// - otherwise an entry quarantined for this same lane name (its old entry
///   comes back), the lowest if several;
/// - otherwise the lowest entry in no `holders`.
///
/// No pool: `None`, or an error if an entry was requested.
pub fn allocate<P: Pool>(
    pool: Option<&P>,
    holders: &BTreeMap<P::Entry, Holder>,
    lane: &str,
    requested: Option<P::Entry>,
) -> Result<Option<P::Entry>, AllocationError> {
    let kind = P::KIND;
    let Some(pool) = pool else {
        return match requested {
            Some(_) => Err(AllocationError::NoPool { kind }),
            None => Ok(None),
        };
    };
    if let Some(entry) = requested {
        if !pool.contains(entry) {
            return Err(AllocationError::OutsidePool {
                kind,
                entry: entry.to_string(),
                pool: pool.to_string(),
            });
        }
        return match holders.get(&entry) {
            Some(Holder::Lane(other)) if other != lane => Err(AllocationError::Taken {
                kind,
                entry: entry.to_string(),
                lane: other.clone(),
            }),
            Some(Holder::Quarantined { lane: other, until }) if other != lane => {
                Err(AllocationError::Quarantined {
                    kind,
                    entry: entry.to_string(),
                    lane: other.clone(),
                    until: format_unix(*until),
                })
            }
            _ => Ok(Some(entry)),
        };
    }
    let own = holders.iter().find_map(|(entry, h)| match h {
        Holder::Quarantined { lane: l, .. } if l == lane && pool.contains(*entry) => Some(*entry),
        _ => None,
    });
    if own.is_some() {
        return Ok(own);
    }
    match pool.first_free(&|e| holders.contains_key(&e)) {
        Some(entry) => Ok(Some(entry)),
        None => Err(AllocationError::Exhausted {
            kind,
            pool: pool.to_string(),
            used: holders.keys().filter(|e| pool.contains(**e)).count(),
        }),
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub fn format_unix(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_cidrs_and_single_addresses() {
        let r = IpRange::parse("127.0.0.2-127.0.0.254").unwrap();
        assert_eq!(
            (r.first(), r.last(), r.len()),
            (ip("127.0.0.2"), ip("127.0.0.254"), 253)
        );
        let r = IpRange::parse("10.20.0.0/24").unwrap();
        assert_eq!((r.first(), r.last()), (ip("10.20.0.1"), ip("10.20.0.254")));
        let r = IpRange::parse("10.20.0.8/31").unwrap();
        assert_eq!((r.first(), r.last()), (ip("10.20.0.8"), ip("10.20.0.9")));
        let r = IpRange::parse(" 10.1.1.1 ").unwrap();
        assert_eq!((r.first(), r.len()), (ip("10.1.1.1"), 1));
        let r = IpRange::parse("fd00::/64").unwrap();
        assert_eq!(
            (r.first(), r.last()),
            (ip("fd00::1"), ip("fd00::ffff:ffff:ffff:ffff"))
        );
        let r = IpRange::parse("fd00::10-fd00::1f").unwrap();
        assert_eq!(r.len(), 16);
        assert!(r.contains(ip("fd00::1a")) && !r.contains(ip("fd00::20")));
        assert!(!r.contains(ip("0.0.0.16")), "families never mix");
        let r = IpRange::parse("::/0").unwrap();
        assert_eq!(r.len(), u128::MAX, "saturates");
    }

    #[test]
    fn bad_ranges_say_why() {
        for (text, word) in [
            ("10.0.0.300", "not an IP address"),
            ("10.0.0.9-10.0.0.1", "ends before it starts"),
            ("10.0.0.1-fd00::1", "mixes IPv4 and IPv6"),
            ("10.20.0.5/24", "did you mean \"10.20.0.0/24\""),
            ("10.20.0.0/33", "prefix length must be 0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("", "not an IP address"),
        ] {
            let e = IpRange::parse(text).expect_err(text);
            assert!(e.contains(word), "{text:?}: {e}");
        }
    }

    #[test]
    fn vip_pool_rejects_overlaps_and_names_both_entries() {
        let errs = VipPool::parse(&["10.0.0.0/24", "10.1.0.1-10.1.0.9", "10.0.0.200-10.0.1.5"])
            .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, 2, "the later entry is blamed");
        assert!(
            errs[0]
                .1
                .contains("\"10.0.0.200-10.0.1.5\" overlaps \"10.0.0.0/24\""),
            "{}",
            errs[0].1
        );
        let errs = VipPool::parse(&["bogus", "fd00::1-fd00::9", "fd00::9"]).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 2]);
        assert!(VipPool::parse::<&str>(&[]).is_err());
        // Adjacent ranges and the two families side by side are fine.
        let pool =
            VipPool::parse(&["fd00::1-fd00::2", "10.0.0.5-10.0.0.6", "10.0.0.1-10.0.0.4"]).unwrap();
        assert_eq!(
            pool.to_string(),
            "fd00::1-fd00::2, 10.0.0.5-10.0.0.6, 10.0.0.1-10.0.0.4"
        );
        let order: Vec<IpAddr> = pool.ranges().iter().map(|r| r.first()).collect();
        assert_eq!(order, [ip("10.0.0.1"), ip("10.0.0.5"), ip("fd00::1")]);
    }

    #[test]
    fn port_pool_parses() {
        assert_eq!(
            PortPool::parse("20000-20999"),
            Ok(PortPool {
                first: 20000,
                last: 20999
            })
        );
        assert_eq!(
            PortPool::parse("8081").map(|p| p.to_string()),
            Ok("8081".to_string())
        );
        for bad in ["0-10", "20-10", "70000", "a-b", ""] {
            assert!(PortPool::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostname_template() {
        let t = HostnameTemplate::parse("{lane}.QA.{domain}", "lanes.test").unwrap();
        assert_eq!(t.render("t-1", "lanes.test"), "t-1.qa.lanes.test");
        assert!(HostnameTemplate::parse("qa.{domain}", "d")
            .unwrap_err()
            .contains("{lane}"));
        assert!(HostnameTemplate::parse("{lane}.{zone}", "d")
            .unwrap_err()
            .contains("only"));
        assert!(HostnameTemplate::parse("{lane}..x", "d")
            .unwrap_err()
            .contains("valid hostname"));
    }

    fn holders(list: &[(&str, Holder)]) -> BTreeMap<IpAddr, Holder> {
        list.iter().map(|(a, h)| (ip(a), h.clone())).collect()
    }

    fn q(lane: &str) -> Holder {
        Holder::Quarantined {
            lane: lane.into(),
            until: 0,
        }
    }

    #[test]
    fn allocator_takes_the_lowest_free_entry_across_ranges() {
        let pool = VipPool::parse(&["10.0.0.8-10.0.0.9", "10.0.0.1-10.0.0.2"]).unwrap();
        let h = holders(&[("10.0.0.1", Holder::Lane("a".into())), ("10.0.0.2", q("b"))]);
        assert_eq!(
            allocate(Some(&pool), &h, "c", None),
            Ok(Some(ip("10.0.0.8")))
        );
        // The lane that was quarantined gets its own VIP back.
        assert_eq!(
            allocate(Some(&pool), &h, "b", None),
            Ok(Some(ip("10.0.0.2")))
        );
        let full = holders(&[
            ("10.0.0.1", Holder::Lane("a".into())),
            ("10.0.0.2", q("b")),
            ("10.0.0.8", Holder::Lane("d".into())),
            ("10.0.0.9", Holder::Lane("e".into())),
            ("192.168.0.1", Holder::Lane("outside".into())),
        ]);
        let e = allocate(Some(&pool), &full, "c", None).unwrap_err();
        assert!(e.is_conflict());
        assert_eq!(
            e.to_string(),
            "vip pool 10.0.0.8-10.0.0.9, 10.0.0.1-10.0.0.2 is exhausted (4 entries in use or in quarantine); delete lanes or widen [lanes] vip_pool"
        );
    }

    #[test]
    fn requested_entries_are_checked() {
        let pool = VipPool::parse(&["10.0.0.1-10.0.0.9"]).unwrap();
        let h = holders(&[("10.0.0.1", Holder::Lane("a".into())), ("10.0.0.2", q("b"))]);
        let got = |lane: &str, want: &str| allocate(Some(&pool), &h, lane, Some(ip(want)));
        assert_eq!(got("c", "10.0.0.5"), Ok(Some(ip("10.0.0.5"))));
        assert_eq!(got("a", "10.0.0.1"), Ok(Some(ip("10.0.0.1"))), "its own");
        assert_eq!(
            got("b", "10.0.0.2"),
            Ok(Some(ip("10.0.0.2"))),
            "its own, quarantined"
        );
        let e = got("c", "10.0.0.1").unwrap_err();
        assert!(
            e.is_conflict() && e.to_string().contains("taken by lane \"a\""),
            "{e}"
        );
        let e = got("c", "10.0.0.2").unwrap_err();
        assert!(
            e.is_conflict()
                && e.to_string()
                    .contains("quarantine until 1970-01-01T00:00:00Z"),
            "{e}"
        );
        let e = got("c", "10.0.1.1").unwrap_err();
        assert!(!e.is_conflict());
        assert_eq!(
            e.to_string(),
            "vip 10.0.1.1 is outside the vip pool 10.0.0.1-10.0.0.9"
        );
        let none: Option<&VipPool> = None;
        assert_eq!(allocate(none, &h, "c", None), Ok(None));
        assert_eq!(
            allocate(none, &h, "c", Some(ip("10.0.0.5"))),
            Err(AllocationError::NoPool { kind: "vip" })
        );
    }

    #[test]
    fn huge_ipv6_pools_allocate_without_scanning() {
        let pool = VipPool::parse(&["fd00::/16"]).unwrap();
        let h: BTreeMap<IpAddr, Holder> = (1..=1000u128)
            .map(|i| {
                (
                    IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | i)),
                    Holder::Lane(i.to_string()),
                )
            })
            .collect();
        assert_eq!(
            allocate(Some(&pool), &h, "x", None),
            Ok(Some(ip("fd00::3e9")))
        );
    }

    #[test]
    fn ports_allocate_lowest_first() {
        let pool = PortPool::parse("20000-20002").unwrap();
        let mut h = BTreeMap::new();
        h.insert(20000u16, Holder::Lane("a".into()));
        assert_eq!(allocate(Some(&pool), &h, "b", None), Ok(Some(20001)));
        h.insert(20001, Holder::Lane("b".into()));
        h.insert(20002, q("c"));
        let e = allocate(Some(&pool), &h, "d", None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("port pool 20000-20002 is exhausted (3 entries"),
            "{e}"
        );
        assert_eq!(allocate(Some(&pool), &h, "c", None), Ok(Some(20002)));
    }
}
