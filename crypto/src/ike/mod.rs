//! IKEv2 (RFC 7296): the sans-IO key management core.
//!
//! Modules: [`proposal`] (algorithms and proposal strings), [`keys`] (prf+, SKEYSEED, KEYMAT,
//! AUTH), [`dh`] (groups 19 and 31), [`message`] (the payload codec), [`sk`] (the encrypted
//! payload).

pub mod dh;
mod drbg;
pub mod keys;
pub mod message;
pub mod proposal;
pub mod sk;
