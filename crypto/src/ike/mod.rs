//! IKEv2 (RFC 7296): the sans-IO key management core of a braid tunnel.
//!
//! [`IkeSession`] is one tunnel's state machine (see [`session`] for what it implements and
//! leaves out). Inputs are `handle_message(now, from, bytes)`, `handle_timeout(now)` and a few
//! calls from the driver (`start`, `close`, `rekey_*`, `note_*`); outputs are
//! `poll_transmit()`, `poll_event()` and `poll_timeout()`. The supporting modules hold the
//! pieces, each testable alone: [`proposal`] (algorithms, strongSwan-style proposal strings,
//! proposal selection), [`keys`] (prf+, SKEYSEED, SK_*, KEYMAT, PSK AUTH), [`dh`] (groups 19
//! and 31), [`message`] (the payload codec) and [`sk`] (the AEAD-protected SK payload).
//!
//! Algorithms: AES-256-GCM-16 and ChaCha20-Poly1305 for both IKE and ESP, PRF HMAC-SHA-256,
//! Diffie-Hellman groups 19 (ECP-256) and 31 (Curve25519), ESN on or off.

pub mod dh;
mod drbg;
pub mod keys;
pub mod message;
pub mod proposal;
pub mod session;
pub mod sk;

pub use keys::Keymat;
pub use message::{Identity, TrafficSelector};
pub use proposal::{
    DhGroup, Esn, EspAlgorithms, EspProposal, IkeAlgorithms, IkeProposal, Prf, ProposalError,
};
pub use session::{
    ChildId, ChildStatus, DownReason, Drops, Event, IkeConfig, IkeSaStatus, IkeSession, NatStatus,
    Psk, Retransmit, RngError, SessionState, Status, Transmit,
};
