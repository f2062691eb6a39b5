//! Per-neighbour routing policy: prefix lists, AS_PATH prepend and max-prefix, with the default-deny rule of
//! RFC 8212 for eBGP sessions.
//!
//! A [`PrefixList`] is a list of [`PrefixListEntry`] with the Cisco/FRR `ip prefix-list` matching rules
//! (`10.20.0.0/16` exact, `10.20.0.0/16 le 24`, `10.0.0.0/8 ge 16 le 24`, `0.0.0.0/0 le 32`); a prefix is
//! permitted when any entry matches and denied otherwise. [`NeighborPolicy`] holds a neighbour's import and
//! export lists and applies RFC 8212 section 3: on an eBGP session with no import (export) policy configured,
//! nothing is accepted (advertised); on iBGP the absence of a policy means everything.
//!
//! Deliberately left out: explicit `deny` entries and sequence numbers (a list is a set of permits; a deny
//! list is written as the complement), route maps that change attributes (the only attribute change braid
//! makes is the AS_PATH prepend, carried here and applied by [`super::rib`]), AS_PATH and community filters.

use std::fmt;
use std::str::FromStr;

use super::types::Prefix;

/// Most extra copies of our ASN a neighbour's `prepend` may ask for; more makes no routing sense and only
/// bloats AS_PATHs (and is a well-known way to get routes filtered upstream).
pub const MAX_PREPEND: u8 = 10;

fn max_len(p: &Prefix) -> u8 {
    if p.addr().is_ipv4() {
        32
    } else {
        128
    }
}

/// One prefix-list entry: a prefix and the range of lengths it matches within it.
///
/// Written `PREFIX`, `PREFIX le N`, `PREFIX ge N` or `PREFIX ge N le M`. Without `ge`/`le` only the prefix
/// itself matches; `le N` matches lengths `len..=N`; `ge N` matches `N..=32` (or `128`) unless `le` is also
/// given. The lengths must satisfy `len <= ge <= le <= 32 (128)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrefixListEntry {
    prefix: Prefix,
    ge: u8,
    le: u8,
}

impl PrefixListEntry {
    /// The covering prefix.
    pub fn prefix(&self) -> Prefix {
        self.prefix
    }

    /// The shortest and longest prefix lengths matched.
    pub fn lengths(&self) -> (u8, u8) {
        (self.ge, self.le)
    }

    /// Whether `p` is inside this entry's prefix (same family) with a length in the entry's range.
    pub fn matches(&self, p: &Prefix) -> bool {
        p.addr().is_ipv4() == self.prefix.addr().is_ipv4()
            && (self.ge..=self.le).contains(&p.len())
            && self.prefix.contains(p.addr())
    }
}

impl FromStr for PrefixListEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<PrefixListEntry, String> {
        let mut words = s.split_whitespace();
        let first = words.next().ok_or_else(|| {
            "empty prefix-list entry (expected e.g. \"10.0.0.0/8 le 24\")".to_string()
        })?;
        let prefix: Prefix = first.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = max_len(&prefix);
        let mut ge: Option<u8> = None;
        let mut le: Option<u8> = None;
        while let Some(word) = words.next() {
            let slot = match word.to_ascii_lowercase().as_str() {
                "ge" if le.is_some() => {
                    return Err(format!("{s:?}: \"ge\" must come before \"le\""));
                }
                "ge" => &mut ge,
                "le" => &mut le,
                other => {
                    return Err(format!(
                        "{s:?}: unexpected {other:?} (expected \"ge N\" or \"le N\")"
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!("{s:?}: {word:?} given twice"));
            }
            let n = words
                .next()
                .ok_or_else(|| format!("{s:?}: {word:?} needs a prefix length"))?;
            let n: u8 = n
                .parse()
                .map_err(|_| format!("{s:?}: {n:?} is not a prefix length"))?;
            if n > max {
                return Err(format!(
                    "{s:?}: {word} {n} is longer than {max}, the longest {} prefix",
                    family_name(max)
                ));
            }
            *slot = Some(n);
        }
        let len = prefix.len();
        if let Some(g) = ge {
            if g < len {
                return Err(format!(
                    "{s:?}: ge {g} is shorter than the prefix length {len}"
                ));
            }
        }
        if let Some(l) = le {
            if l < len {
                return Err(format!(
                    "{s:?}: le {l} is shorter than the prefix length {len}"
                ));
            }
            if let Some(g) = ge {
                if g > l {
                    return Err(format!("{s:?}: ge {g} is greater than le {l}"));
                }
            }
        }
        let (ge, le) = match (ge, le) {
            (None, None) => (len, len),
            (Some(g), None) => (g, max),
            (None, Some(l)) => (len, l),
            (Some(g), Some(l)) => (g, l),
        };
        Ok(PrefixListEntry { prefix, ge, le })
    }
}

fn family_name(max: u8) -> &'static str {
    if max == 32 {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl fmt::Display for PrefixListEntry {
    /// The canonical form: `ge`/`le` shown only where they differ from the defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.prefix)?;
        let len = self.prefix.len();
        let max = max_len(&self.prefix);
        // Without ge, le defaults to len; with ge, to the maximum length.
        let le_default = if self.ge != len {
            write!(f, " ge {}", self.ge)?;
            max
        } else {
            len
        };
        if self.le != le_default {
            write!(f, " le {}", self.le)?;
        }
        Ok(())
    }
}

/// A list of permitted prefixes: a prefix is permitted when any entry matches, denied otherwise (an empty list
/// denies everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixList(pub Vec<PrefixListEntry>);

impl PrefixList {
    /// Parses every entry; the error names the entry that is wrong and why.
    pub fn parse<I, S>(entries: I) -> Result<PrefixList, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_ref()
                    .parse()
                    .map_err(|e| format!("entry {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PrefixList)
    }

    pub fn permits(&self, p: &Prefix) -> bool {
        self.0.iter().any(|e| e.matches(p))
    }
}

/// What is configured for one neighbour (the `[[bgp.neighbor]]` keys `import`, `export`, `prepend`,
/// `max_prefix`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighborPolicy {
    /// Prefixes accepted from the neighbour; `None` = no import policy configured (RFC 8212 applies).
    pub import: Option<PrefixList>,
    /// Prefixes advertised to the neighbour; `None` = no export policy configured (RFC 8212 applies).
    pub export: Option<PrefixList>,
    /// Extra copies of our ASN on routes sent to this (eBGP) neighbour, `0..=`[`MAX_PREPEND`]; larger values
    /// are clamped to [`MAX_PREPEND`].
    pub prepend: u8,
    /// Most prefixes accepted from the neighbour (all families together) before the session is stopped with
    /// Cease / Maximum Number of Prefixes Reached (RFC 4486).
    pub max_prefix: Option<u32>,
}

impl NeighborPolicy {
    /// Whether a route for `p` received from this neighbour may be accepted. RFC 8212 section 3: without an
    /// import policy an eBGP session accepts nothing, an iBGP session everything.
    pub fn import_permits(&self, ebgp: bool, p: &Prefix) -> bool {
        match &self.import {
            Some(list) => list.permits(p),
            None => !ebgp,
        }
    }

    /// Whether a route for `p` may be advertised to this neighbour. RFC 8212 section 3: without an export
    /// policy an eBGP session advertises nothing, an iBGP session everything.
    pub fn export_permits(&self, ebgp: bool, p: &Prefix) -> bool {
        match &self.export {
            Some(list) => list.permits(p),
            None => !ebgp,
        }
    }

    /// The configured prepend, clamped to [`MAX_PREPEND`].
    pub fn prepend_count(&self) -> u8 {
        self.prepend.min(MAX_PREPEND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> PrefixListEntry {
        s.parse().unwrap()
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_for_ge_and_le() {
        assert_eq!(e("10.20.0.0/16").lengths(), (16, 16));
        assert_eq!(e("10.20.0.0/16 le 24").lengths(), (16, 24));
        assert_eq!(e("10.0.0.0/8 ge 16").lengths(), (16, 32));
        assert_eq!(e("10.0.0.0/8 ge 16 le 24").lengths(), (16, 24));
        assert_eq!(e("::/0 le 128").lengths(), (0, 128));
        assert_eq!(e("2001:db8::/32 ge 48").lengths(), (48, 128));
        assert_eq!(e("10.0.0.0/8 GE 9 LE 9").lengths(), (9, 9));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for s in [
            "10.20.0.0/16",
            "10.20.0.0/16 le 24",
            "10.0.0.0/8 ge 16",
            "10.0.0.0/8 ge 16 le 24",
            "10.0.0.0/8 ge 16 le 16",
            "::/0 le 128",
        ] {
            let entry = e(s);
            assert_eq!(entry.to_string(), s);
            assert_eq!(e(&entry.to_string()), entry);
        }
        assert_eq!(e("10.0.0.0/8 ge 16 le 32").to_string(), "10.0.0.0/8 ge 16");
        assert_eq!(e("10.0.0.0/8 le 8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn rfc8212_defaults_by_session_type() {
        let none = NeighborPolicy::default();
        let x = p("192.0.2.0/24");
        assert!(!none.import_permits(true, &x));
        assert!(!none.export_permits(true, &x));
        assert!(none.import_permits(false, &x));
        assert!(none.export_permits(false, &x));
        let empty = NeighborPolicy {
            import: Some(PrefixList::default()),
            export: Some(PrefixList::default()),
            ..NeighborPolicy::default()
        };
        assert!(
            !empty.import_permits(false, &x),
            "an explicit empty list denies, even on iBGP"
        );
        assert!(!empty.export_permits(false, &x));
    }

    #[test]
    fn prepend_is_clamped() {
        let pol = NeighborPolicy {
            prepend: 200,
            ..NeighborPolicy::default()
        };
        assert_eq!(pol.prepend_count(), MAX_PREPEND);
    }
}
