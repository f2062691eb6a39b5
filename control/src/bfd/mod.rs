//! Bidirectional Forwarding Detection (RFC 5880, single hop over IPv4/IPv6 per RFC 5881), sans-IO: the
//! Control packet codec ([`packet`]) and one asynchronous-mode session state machine ([`session`]) with time
//! passed in. The driver that owns the UDP sockets (port 3784, TTL/hop limit 255 checks of RFC 5881 5, source
//! ports 49152-65535), demultiplexes received packets to sessions and feeds the clock is not here.
//!
//! Deliberately left out: authentication (packets with the A bit are refused), Demand mode, the Echo function
//! and multipoint BFD.

pub mod packet;
pub mod session;

pub use packet::{ControlPacket, DecodeError, Diag, SessionState, CONTROL_LEN};
pub use session::{Event, Negotiated, Session, SessionConfig};
