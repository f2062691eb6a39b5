//! `braid check -c A.toml -c B.toml`: the two ends of every tunnel, checked against each other.
//!
//! Two tunnels face each other when each one's `remote` is the other's uplink address and port. For every such
//! pair the check compares what both ends must agree on, and says which keys differ:
//! - keying: both manual or both IKEv2; manual keys: the cipher, and each end's `spi_out` is the other's `spi_in`;
//!   IKEv2: the same pre-shared key, a common IKE and ESP proposal, one initiator (errors: the tunnel cannot
//!   work; two initiators is a warning);
//! - the inside addresses: each end's peer inside address is the other's own (error);
//! - removal timers (the seed article: keep them the same on both sides): BFD on one end only, or a different
//!   interval or multiplier (each end then declares the tunnel down after a different time), a different
//!   hold-down, and a different BGP hold time on the sessions through the tunnel (BGP then runs on the smaller
//!   one) (warnings);
//! - ESN and the anti-replay window (warnings).
//!
//! A tunnel whose remote is in none of the files is left alone: its other end is not braid, or not given.

use std::net::SocketAddr;

use crate::config::{BfdConfig, Config, Keying};

/// One finding about a tunnel pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The tunnel at both ends, as `gateway/tunnel`.
    pub a: String,
    pub b: String,
    /// The key that differs (as in the config, e.g. `bfd.interval_ms`).
    pub key: String,
    pub message: String,
    /// Errors stop the tunnel from working; the rest are warnings.
    pub error: bool,
}

/// The tunnel pairs across `configs` and what their ends disagree on.
pub fn check(configs: &[Config]) -> (usize, Vec<Finding>) {
    let mut pairs = 0;
    let mut out = Vec::new();
    for (ia, a) in configs.iter().enumerate() {
        for b in configs.iter().skip(ia + 1) {
            for ta in &a.tunnels {
                for tb in &b.tunnels {
                    let ua = &a.uplinks[ta.uplink];
                    let ub = &b.uplinks[tb.uplink];
                    if ta.remote != SocketAddr::new(ub.local, ub.port)
                        || tb.remote != SocketAddr::new(ua.local, ua.port)
                    {
                        continue;
                    }
                    pairs += 1;
                    compare(a, ta, b, tb, &mut out);
                }
            }
        }
    }
    (pairs, out)
}

fn compare(
    a: &Config,
    ta: &crate::config::Tunnel,
    b: &Config,
    tb: &crate::config::Tunnel,
    out: &mut Vec<Finding>,
) {
    let name_a = format!("{}/{}", a.gateway.name, ta.name);
    let name_b = format!("{}/{}", b.gateway.name, tb.name);
    let mut say = |key: &str, error: bool, message: String| {
        out.push(Finding {
            a: name_a.clone(),
            b: name_b.clone(),
            key: key.into(),
            message,
            error,
        })
    };
    match (&ta.keying, &tb.keying) {
        (Keying::Static(ka), Keying::Static(kb)) => {
            if ka.cipher != kb.cipher {
                say(
                    "static.cipher",
                    true,
                    format!("{} here, {} there", ka.cipher.name(), kb.cipher.name()),
                );
            }
            if ka.spi_out != kb.spi_in {
                say(
                    "static.spi_out",
                    true,
                    format!(
                        "this end sends SPI {:#010x}, the other end expects {:#010x}",
                        ka.spi_out, kb.spi_in
                    ),
                );
            }
            if kb.spi_out != ka.spi_in {
                say(
                    "static.spi_in",
                    true,
                    format!(
                        "this end expects SPI {:#010x}, the other end sends {:#010x}",
                        ka.spi_in, kb.spi_out
                    ),
                );
            }
        }
        (Keying::Ike(ia), Keying::Ike(ib)) => {
            if ia.psk.expose() != ib.psk.expose() {
                say("ike.psk_file", true, "the pre-shared keys differ".into());
            }
            match (ia.initiator, ib.initiator) {
                (false, false) => say(
                    "ike.initiator",
                    true,
                    "both ends are responders: nobody starts the IKE SA".into(),
                ),
                (true, true) => say(
                    "ike.initiator",
                    false,
                    "both ends initiate: set `initiator = false` at one end so they do not race"
                        .into(),
                ),
                _ => {}
            }
            if !ia.proposals.iter().any(|p| ib.proposals.contains(p)) {
                say("ike.proposal", true, "no IKE proposal in common".into());
            }
            if !ia
                .esp_proposals
                .iter()
                .any(|p| ib.esp_proposals.contains(p))
            {
                say("ike.esp_proposal", true, "no ESP proposal in common".into());
            }
        }
        _ => say(
            "static",
            true,
            format!(
                "keyed by {} here and by {} there",
                ta.keying.kind(),
                tb.keying.kind()
            ),
        ),
    }
    let own_a: Vec<_> = ta.inside.iter().map(|i| i.addr).collect();
    let own_b: Vec<_> = tb.inside.iter().map(|i| i.addr).collect();
    if ta.peer_inside.iter().any(|p| !own_b.contains(p))
        || tb.peer_inside.iter().any(|p| !own_a.contains(p))
    {
        say(
            "inside",
            true,
            format!(
                "the ends' inside addresses do not mirror each other: {:?} here (peer {:?}), {:?} there (peer {:?})",
                own_a, ta.peer_inside, own_b, tb.peer_inside
            ),
        );
    }
    match (&ta.bfd, &tb.bfd) {
        (Some(x), Some(y)) => compare_bfd(x, y, &mut say),
        (Some(_), None) | (None, Some(_)) => say(
            "bfd",
            false,
            format!(
                "BFD is on at {} only: the other end never answers, so this end's session stays Down and \
                 its failures are found by the BGP hold timer",
                if ta.bfd.is_some() { &name_a } else { &name_b }
            ),
        ),
        (None, None) => {}
    }
    if ta.esn != tb.esn {
        say(
            "esn",
            false,
            format!(
                "ESN {} here, {} there: the SAs will not agree on sequence numbers",
                ta.esn, tb.esn
            ),
        );
    }
    if (ta.replay_window == 0) != (tb.replay_window == 0) {
        say(
            "replay_window",
            false,
            format!(
                "anti-replay {} here, {} there",
                ta.replay_window, tb.replay_window
            ),
        );
    }
    let hold = |c: &Config, t: &crate::config::Tunnel| -> Option<u16> {
        let i = c.tunnels.iter().position(|x| x.name == t.name)?;
        c.bgp
            .as_ref()?
            .neighbors
            .iter()
            .find(|n| n.tunnel == Some(i))
            .map(|n| n.hold_time)
    };
    match (hold(a, ta), hold(b, tb)) {
        (Some(x), Some(y)) if x != y => say(
            "bgp.neighbor.hold_time",
            false,
            format!(
                "BGP hold time {x} s here, {y} s there: the session runs on {} s, not what either end expects",
                x.min(y)
            ),
        ),
        (Some(_), None) | (None, Some(_)) => say(
            "bgp.neighbor",
            false,
            "a BGP session through the tunnel is configured at one end only".into(),
        ),
        _ => {}
    }
}

fn compare_bfd(x: &BfdConfig, y: &BfdConfig, say: &mut impl FnMut(&str, bool, String)) {
    // RFC 5880 6.8.4: each end's detection time is the other's multiplier times the agreed interval.
    let interval = x.interval_ms.max(y.interval_ms);
    let (here, there) = (
        y.multiplier as u32 * interval,
        x.multiplier as u32 * interval,
    );
    if x.interval_ms != y.interval_ms || x.multiplier != y.multiplier {
        say(
            if x.interval_ms != y.interval_ms {
                "bfd.interval_ms"
            } else {
                "bfd.multiplier"
            },
            false,
            format!(
                "BFD {} ms x {} here, {} ms x {} there: this end declares the tunnel down after {here} ms, the other \
                 after {there} ms; keep removal timers the same on both sides",
                x.interval_ms, x.multiplier, y.interval_ms, y.multiplier
            ),
        );
    }
    if x.hold_down_ms != y.hold_down_ms {
        say(
            "bfd.hold_down_ms",
            false,
            format!(
                "BFD hold-down {} ms here, {} ms there: after a flap one end puts the tunnel back in use before the other",
                x.hold_down_ms, y.hold_down_ms
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223";
    const K2: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3";

    /// One end of a tunnel between 198.51.100.1 (`a`) and 198.51.100.2 (`b`), with a BGP session through it.
    fn end(a: bool, spi_out: u32, spi_in: u32, bfd: &str, hold: u16) -> Config {
        let (name, local, remote, inside, asn, peer_asn) = if a {
            (
                "gw-a",
                "198.51.100.1",
                "198.51.100.2",
                "169.254.0.1/30",
                65001,
                65002,
            )
        } else {
            (
                "gw-b",
                "198.51.100.2",
                "198.51.100.1",
                "169.254.0.2/30",
                65002,
                65001,
            )
        };
        let (kout, kin) = if a { (K1, K2) } else { (K2, K1) };
        let text = format!(
            "[gateway]\nname = \"{name}\"\ntun = \"braid0\"\nasn = {asn}\nrouter_id = \"192.0.2.1\"\n\
             [[uplink]]\nname = \"isp1\"\nlocal = \"{local}\"\n\
             [[tunnel]]\nname = \"t\"\nuplink = \"isp1\"\nremote = \"{remote}:4500\"\ninside = \"{inside}\"\n\
             static = {{ cipher = \"aes256gcm16\", spi_out = \"{spi_out:#x}\", spi_in = \"{spi_in:#x}\", key_out = \"{kout}\", key_in = \"{kin}\" }}\n\
             {bfd}\n\
             [[bgp.neighbor]]\ntunnel = \"t\"\nremote_asn = {peer_asn}\nhold_time = {hold}\n\
             [bgp]\nnetworks = [\"192.0.2.0/25\"]\n"
        );
        Config::parse(Path::new("test.toml"), &text).unwrap()
    }

    #[test]
    fn matching_ends_have_nothing_to_say() {
        let bfd = "bfd = { interval_ms = 100, multiplier = 3 }";
        let (pairs, f) = check(&[
            end(true, 0x1000, 0x2000, bfd, 30),
            end(false, 0x2000, 0x1000, bfd, 30),
        ]);
        assert_eq!(pairs, 1);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn mismatches_are_named_by_key() {
        let (pairs, f) = check(&[
            end(
                true,
                0x1000,
                0x2000,
                "bfd = { interval_ms = 100, multiplier = 3 }",
                30,
            ),
            end(
                false,
                0x2001,
                0x1000,
                "bfd = { interval_ms = 300, multiplier = 5 }",
                90,
            ),
        ]);
        assert_eq!(pairs, 1);
        let keys: Vec<(&str, bool)> = f.iter().map(|f| (f.key.as_str(), f.error)).collect();
        assert_eq!(
            keys,
            [
                ("static.spi_in", true),
                ("bfd.interval_ms", false),
                ("bgp.neighbor.hold_time", false)
            ],
            "{f:?}"
        );
        // 300 ms agreed interval: this end waits for 5 missed packets (1500 ms), the other for 3 (900 ms).
        assert!(
            f[1].message.contains("after 1500 ms") && f[1].message.contains("after 900 ms"),
            "{}",
            f[1].message
        );
        assert!(f[2].message.contains("runs on 30 s"), "{}", f[2].message);
    }

    #[test]
    fn bfd_at_one_end_only_is_a_warning() {
        let (_, f) = check(&[
            end(
                true,
                0x1000,
                0x2000,
                "bfd = { interval_ms = 100, multiplier = 3 }",
                30,
            ),
            end(false, 0x2000, 0x1000, "", 30),
        ]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].key.as_str(), f[0].error), ("bfd", false));
        assert!(f[0].a.starts_with("gw-a/") && f[0].b.starts_with("gw-b/"));
    }

    #[test]
    fn unrelated_tunnels_are_not_paired() {
        let a = end(true, 0x1000, 0x2000, "", 30);
        let (pairs, f) = check(&[a.clone(), a]);
        assert_eq!((pairs, f.len()), (0, 0));
    }
}
