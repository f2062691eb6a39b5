//! IP prefixes (`192.0.2.0/24`, `2001:db8::/32`) and a small longest-prefix-match table.
//!
//! [`Prefix`] is the one prefix type of braid: config, routes and the inner-source check all use it.
//! [`PrefixTable`] is a sorted linear longest-prefix match, right for the handful of static routes and inside
//! addresses a tunnel carries today; the BGP-fed FIB of the multipath work replaces it for large tables.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Builds a prefix, clearing host bits. Returns `None` if `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return None;
        }
        Some(Prefix {
            addr: mask(addr, len),
            len,
        })
    }

    /// The host prefix (/32 or /128) of `addr`.
    pub fn host(addr: IpAddr) -> Prefix {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether the prefix is the default route (length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a prefix string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixParseError(String);

impl fmt::Display for PrefixParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PrefixParseError {}

impl FromStr for Prefix {
    type Err = PrefixParseError;

    /// Parses `ADDR/LEN`. Host bits must be zero: `10.0.0.1/8` is almost always a typo for a route.
    fn from_str(s: &str) -> Result<Prefix, PrefixParseError> {
        let (a, l) = s.split_once('/').ok_or_else(|| {
            PrefixParseError(format!("{s:?} is not a prefix (expected ADDRESS/LENGTH)"))
        })?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| PrefixParseError(format!("{a:?} is not an IP address")))?;
        let len: u8 = l
            .parse()
            .map_err(|_| PrefixParseError(format!("{l:?} is not a prefix length")))?;
        let p = Prefix::new(addr, len).ok_or_else(|| {
            PrefixParseError(format!("prefix length {len} is too long for {addr}"))
        })?;
        if p.addr != addr {
            return Err(PrefixParseError(format!(
                "{s} has host bits set (did you mean {p}?)"
            )));
        }
        Ok(p)
    }
}

/// Longest-prefix match from prefixes to values of type `T`.
#[derive(Clone, Debug)]
pub struct PrefixTable<T> {
    /// Sorted by descending length, so the first match is the longest.
    entries: Vec<(Prefix, T)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            entries: Vec::new(),
        }
    }
}

impl<T> PrefixTable<T> {
    pub fn new() -> PrefixTable<T> {
        PrefixTable::default()
    }

    /// Inserts or replaces the value for `prefix`.
    pub fn insert(&mut self, prefix: Prefix, value: T) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == prefix) {
            e.1 = value;
            return;
        }
        let at = self
            .entries
            .iter()
            .position(|e| e.0.len < prefix.len)
            .unwrap_or(self.entries.len());
        self.entries.insert(at, (prefix, value));
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        self.entries
            .iter()
            .find(|(p, _)| p.contains(ip))
            .map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Prefix, T)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contains() {
        let p: Prefix = "192.0.2.0/24".parse().unwrap();
        assert!(p.contains("192.0.2.77".parse().unwrap()));
        assert!(!p.contains("192.0.3.1".parse().unwrap()));
        assert!(!p.contains("2001:db8::1".parse().unwrap()));
        assert!("192.0.2.1/24"
            .parse::<Prefix>()
            .unwrap_err()
            .0
            .contains("host bits"));
        assert!("192.0.2.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
        let d: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(d.contains("203.0.113.9".parse().unwrap()));
        let v6: Prefix = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn longest_match_wins() {
        let mut t = PrefixTable::new();
        t.insert("0.0.0.0/0".parse().unwrap(), 0);
        t.insert("192.0.2.0/24".parse().unwrap(), 24);
        t.insert("192.0.2.128/25".parse().unwrap(), 25);
        t.insert("::/0".parse().unwrap(), 6);
        assert_eq!(t.lookup("192.0.2.200".parse().unwrap()), Some(&25));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(&24));
        assert_eq!(t.lookup("198.51.100.1".parse().unwrap()), Some(&0));
        assert_eq!(t.lookup("2001:db8::1".parse().unwrap()), Some(&6));
        t.insert("192.0.2.0/24".parse().unwrap(), 99);
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(&99));
        assert_eq!(t.len(), 4);
    }
}
