//! BGP-4 (RFC 4271) with multiprotocol IPv4/IPv6 unicast (RFC 4760), 4-octet ASNs (RFC 6793), route refresh
//! (RFC 2918), revised error handling (RFC 7606), Cease subcodes (RFC 4486) and the shutdown communication
//! (RFC 8203/9003).
//!
//! Modules, one concern each:
//! - [`types`]: the message model (what a message *means*), shared by every other module;
//! - [`wire`]: encoding and decoding against the negotiated capabilities; decode errors know the NOTIFICATION
//!   they cause or the RFC 7606 action (treat-as-withdraw, attribute discard) that keeps the session up;
//! - [`fsm`]: the session state machine of RFC 4271 section 8 (sans-IO, virtual clock);
//! - [`rib`]: Adj-RIB-In, Loc-RIB with best path and multipath, Adj-RIB-Out;
//! - [`policy`]: prefix lists, prepend, max-prefix, RFC 8212 default deny;
//! - [`speaker`]: the tokio driver: listener, connections, timers, and the actor that owns it all.

pub mod fsm;
pub mod policy;
pub mod rib;
pub mod speaker;
pub mod types;
pub mod wire;
