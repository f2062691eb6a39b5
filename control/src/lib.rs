//! braid's control plane: an embedded BGP-4 speaker ([`bgp`]) and the route installer ([`install`]) that turns
//! routes into the data path's forwarding table. Sans-IO cores (wire codec, session
//! FSM, RIB, policy, best path) are plain state machines with time passed in; the tokio tasks that own the
//! sockets and timers drive them.

#![forbid(unsafe_code)]

/// BFD (RFC 5880/5881): Control packet codec and the sans-IO asynchronous-mode session.
pub mod bfd;
pub mod bgp;
pub mod install;
