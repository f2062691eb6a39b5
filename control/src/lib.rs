//! braid's control plane. Today: an embedded BGP-4 speaker ([`bgp`]). Sans-IO cores (wire codec, session
//! FSM, RIB, policy, best path) are plain state machines with time passed in; the tokio tasks that own the
//! sockets and timers drive them.

#![forbid(unsafe_code)]

pub mod bgp;
