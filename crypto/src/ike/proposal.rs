//! Algorithm proposals: the strongSwan-style proposal strings braid is configured with, their
//! encoding as SA payload proposals, and the selection of one proposal from a peer's offer.
//!
//! Implements the parts of RFC 7296 section 3.3 (Security Association payload: proposals,
//! transforms, the Key Length attribute of 3.3.5) and section 2.7 (proposal selection by the
//! responder, and the initiator's check that the answer is one it offered) that braid's
//! algorithms need: ENCR_AES_GCM_16 with a 256-bit key (RFC 5282 for IKE, RFC 4106 for ESP),
//! ENCR_CHACHA20_POLY1305 (RFC 7634), PRF_HMAC_SHA2_256 (RFC 4868), Diffie-Hellman groups 19
//! (ECP-256, RFC 5903) and 31 (Curve25519, RFC 8031), and the ESN transform (type 5).
//!
//! Proposal strings follow strongSwan's syntax: `aes256gcm16-prfsha256-ecp256` or
//! `chacha20poly1305-prfsha256-x25519` for IKE; `aes256gcm16-ecp256` (PFS with group 19),
//! `aes256gcm16` (no PFS), with optional `-esn` / `-noesn` suffixes, for ESP. Several
//! algorithms of one kind may appear in one proposal and several proposals may be given
//! separated by commas; the order is the order of preference.
//!
//! Deliberately left out: non-AEAD ciphers and integrity transforms, other PRFs and groups,
//! AH, and IPComp. Transforms of unknown types or IDs in a peer's proposal are not errors: they
//! simply never match.

use std::fmt;
use std::str::FromStr;

use crate::esp::Cipher;
use crate::ike::message::{Proposal, Transform};

/// Transform type 1: encryption algorithm (RFC 7296 section 3.3.2).
pub const TRANSFORM_ENCR: u8 = 1;
/// Transform type 2: pseudorandom function.
pub const TRANSFORM_PRF: u8 = 2;
/// Transform type 3: integrity algorithm (never used by braid: its ciphers are AEAD).
pub const TRANSFORM_INTEG: u8 = 3;
/// Transform type 4: Diffie-Hellman group (Key Exchange Method).
pub const TRANSFORM_DH: u8 = 4;
/// Transform type 5: Extended Sequence Numbers.
pub const TRANSFORM_ESN: u8 = 5;

/// ENCR_AES_GCM_16 (RFC 5282 / RFC 4106): AES-GCM with a 16-octet ICV.
pub const ENCR_AES_GCM_16: u16 = 20;
/// ENCR_CHACHA20_POLY1305 (RFC 7634).
pub const ENCR_CHACHA20_POLY1305: u16 = 28;
/// PRF_HMAC_SHA2_256 (RFC 4868).
pub const PRF_HMAC_SHA2_256: u16 = 5;

/// Security protocol ID of the IKE SA (RFC 7296 section 3.3.1).
pub const PROTO_IKE: u8 = 1;
/// Security protocol ID of ESP.
pub const PROTO_ESP: u8 = 3;

/// The Key Length transform attribute (type 14, always TV format).
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Cipher transform ID and, for AES-GCM, the Key Length attribute value in bits.
fn cipher_transform(c: Cipher) -> Transform {
    match c {
        Cipher::Aes256Gcm16 => Transform {
            kind: TRANSFORM_ENCR,
            id: ENCR_AES_GCM_16,
            key_len: Some(256),
            other_attrs: Vec::new(),
        },
        Cipher::ChaCha20Poly1305 => Transform {
            kind: TRANSFORM_ENCR,
            id: ENCR_CHACHA20_POLY1305,
            key_len: None,
            other_attrs: Vec::new(),
        },
    }
}

/// The cipher a transform names, if braid implements it with exactly these attributes.
fn cipher_of(t: &Transform) -> Option<Cipher> {
    if t.kind != TRANSFORM_ENCR || t.has_unknown_attrs() {
        return None;
    }
    match (t.id, t.key_len) {
        (ENCR_AES_GCM_16, Some(256)) => Some(Cipher::Aes256Gcm16),
        (ENCR_CHACHA20_POLY1305, None) => Some(Cipher::ChaCha20Poly1305),
        _ => None,
    }
}

/// The pseudorandom functions braid implements.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256 (RFC 4868), strongSwan's `prfsha256`.
    HmacSha256,
}

impl Prf {
    /// The transform ID.
    pub const fn id(self) -> u16 {
        match self {
            Prf::HmacSha256 => PRF_HMAC_SHA2_256,
        }
    }

    /// The proposal keyword.
    pub const fn name(self) -> &'static str {
        match self {
            Prf::HmacSha256 => "prfsha256",
        }
    }

    fn from_transform(t: &Transform) -> Option<Prf> {
        (t.kind == TRANSFORM_PRF
            && !t.has_unknown_attrs()
            && t.key_len.is_none()
            && t.id == PRF_HMAC_SHA2_256)
            .then_some(Prf::HmacSha256)
    }
}

impl fmt::Display for Prf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Diffie-Hellman groups braid implements.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// Group 19, 256-bit random ECP group (RFC 5903), strongSwan's `ecp256`.
    Ecp256,
    /// Group 31, Curve25519 (RFC 8031), strongSwan's `x25519` (or `curve25519`).
    Curve25519,
}

impl DhGroup {
    /// Every group, in braid's order of preference.
    pub const ALL: [DhGroup; 2] = [DhGroup::Curve25519, DhGroup::Ecp256];

    /// The transform ID, also the Diffie-Hellman Group Num of the KE payload.
    pub const fn id(self) -> u16 {
        match self {
            DhGroup::Ecp256 => 19,
            DhGroup::Curve25519 => 31,
        }
    }

    /// The group with this number, if braid implements it.
    pub const fn from_id(id: u16) -> Option<DhGroup> {
        match id {
            19 => Some(DhGroup::Ecp256),
            31 => Some(DhGroup::Curve25519),
            _ => None,
        }
    }

    /// The proposal keyword.
    pub const fn name(self) -> &'static str {
        match self {
            DhGroup::Ecp256 => "ecp256",
            DhGroup::Curve25519 => "x25519",
        }
    }

    /// The length of the Key Exchange Data of this group: x || y for ECP-256 (RFC 5903
    /// section 7), the u-coordinate for Curve25519 (RFC 8031 section 2).
    pub const fn public_len(self) -> usize {
        match self {
            DhGroup::Ecp256 => 64,
            DhGroup::Curve25519 => 32,
        }
    }

    fn transform(self) -> Transform {
        Transform {
            kind: TRANSFORM_DH,
            id: self.id(),
            key_len: None,
            other_attrs: Vec::new(),
        }
    }

    fn from_transform(t: &Transform) -> Option<DhGroup> {
        if t.kind != TRANSFORM_DH || t.has_unknown_attrs() || t.key_len.is_some() {
            return None;
        }
        DhGroup::from_id(t.id)
    }
}

impl fmt::Display for DhGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Extended Sequence Numbers (transform type 5): whether the child SA uses 64-bit sequence
/// numbers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Esn {
    /// 32-bit sequence numbers (transform ID 0), strongSwan's `noesn`.
    No,
    /// 64-bit extended sequence numbers (transform ID 1), strongSwan's `esn`.
    Yes,
}

impl Esn {
    /// The transform ID.
    pub const fn id(self) -> u16 {
        match self {
            Esn::No => 0,
            Esn::Yes => 1,
        }
    }

    /// Whether ESN is on.
    pub const fn enabled(self) -> bool {
        matches!(self, Esn::Yes)
    }

    fn transform(self) -> Transform {
        Transform {
            kind: TRANSFORM_ESN,
            id: self.id(),
            key_len: None,
            other_attrs: Vec::new(),
        }
    }

    fn from_transform(t: &Transform) -> Option<Esn> {
        if t.kind != TRANSFORM_ESN || t.has_unknown_attrs() || t.key_len.is_some() {
            return None;
        }
        match t.id {
            0 => Some(Esn::No),
            1 => Some(Esn::Yes),
            _ => None,
        }
    }
}

/// A proposal string that does not parse: the offending token (an unknown keyword, or the whole
/// proposal when a required algorithm is missing) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalError {
    /// The bad token, exactly as written.
    pub token: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ProposalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad proposal token '{}': {}", self.token, self.reason)
    }
}

impl std::error::Error for ProposalError {}

enum Keyword {
    Cipher(Cipher),
    Prf(Prf),
    Group(DhGroup),
    Esn(Esn),
}

fn keyword(token: &str) -> Result<Keyword, ProposalError> {
    let k = match token {
        "aes256gcm16" | "aes256gcm128" => Keyword::Cipher(Cipher::Aes256Gcm16),
        "chacha20poly1305" => Keyword::Cipher(Cipher::ChaCha20Poly1305),
        "prfsha256" => Keyword::Prf(Prf::HmacSha256),
        "ecp256" => Keyword::Group(DhGroup::Ecp256),
        "x25519" | "curve25519" => Keyword::Group(DhGroup::Curve25519),
        "esn" => Keyword::Esn(Esn::Yes),
        "noesn" => Keyword::Esn(Esn::No),
        _ => {
            return Err(ProposalError {
                token: token.to_string(),
                reason: "unknown or unsupported algorithm (braid implements aes256gcm16, \
                         chacha20poly1305, prfsha256, ecp256, x25519, esn, noesn)",
            })
        }
    };
    Ok(k)
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim)
}

fn empty_error(s: &str) -> ProposalError {
    ProposalError {
        token: s.to_string(),
        reason: "empty proposal",
    }
}

/// One IKE SA proposal: any of its ciphers with any of its PRFs and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeProposal {
    /// Ciphers, preferred first.
    pub ciphers: Vec<Cipher>,
    /// PRFs, preferred first.
    pub prfs: Vec<Prf>,
    /// Diffie-Hellman groups, preferred first; the first is the one guessed in the
    /// initiator's KE payload.
    pub groups: Vec<DhGroup>,
}

impl IkeProposal {
    /// Parses a comma-separated list such as
    /// `aes256gcm16-prfsha256-ecp256,chacha20poly1305-prfsha256-x25519`.
    ///
    /// # Errors
    /// [`ProposalError`] naming the first bad token.
    pub fn parse_list(s: &str) -> Result<Vec<IkeProposal>, ProposalError> {
        let list = split_list(s)
            .map(str::parse)
            .collect::<Result<Vec<IkeProposal>, _>>()?;
        Ok(list)
    }

    /// The proposal as an SA payload proposal numbered `number`, with `spi` (empty in
    /// IKE_SA_INIT, the new 8-octet SPI when rekeying the IKE SA).
    pub fn to_wire(&self, number: u8, spi: &[u8]) -> Proposal {
        let mut transforms: Vec<Transform> =
            self.ciphers.iter().map(|&c| cipher_transform(c)).collect();
        transforms.extend(self.prfs.iter().map(|p| Transform {
            kind: TRANSFORM_PRF,
            id: p.id(),
            key_len: None,
            other_attrs: Vec::new(),
        }));
        transforms.extend(self.groups.iter().map(|g| g.transform()));
        Proposal {
            number,
            protocol: PROTO_IKE,
            spi: spi.to_vec(),
            transforms,
        }
    }
}

impl FromStr for IkeProposal {
    type Err = ProposalError;

    fn from_str(s: &str) -> Result<IkeProposal, ProposalError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(empty_error(s));
        }
        let mut p = IkeProposal {
            ciphers: Vec::new(),
            prfs: Vec::new(),
            groups: Vec::new(),
        };
        for token in s.split('-') {
            match keyword(token)? {
                Keyword::Cipher(c) => push_unique(&mut p.ciphers, c),
                Keyword::Prf(x) => push_unique(&mut p.prfs, x),
                Keyword::Group(g) => push_unique(&mut p.groups, g),
                Keyword::Esn(_) => {
                    return Err(ProposalError {
                        token: token.to_string(),
                        reason: "ESN applies to ESP proposals, not IKE",
                    })
                }
            }
        }
        let missing = if p.ciphers.is_empty() {
            Some("no cipher (aes256gcm16 or chacha20poly1305)")
        } else if p.prfs.is_empty() {
            Some("no PRF (prfsha256)")
        } else if p.groups.is_empty() {
            Some("no Diffie-Hellman group (ecp256 or x25519)")
        } else {
            None
        };
        match missing {
            Some(reason) => Err(ProposalError {
                token: s.to_string(),
                reason,
            }),
            None => Ok(p),
        }
    }
}

impl fmt::Display for IkeProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self
            .ciphers
            .iter()
            .map(|c| c.name())
            .chain(self.prfs.iter().map(|p| p.name()))
            .chain(self.groups.iter().map(|g| g.name()))
            .collect();
        f.write_str(&words.join("-"))
    }
}

/// One ESP (child SA) proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspProposal {
    /// Ciphers, preferred first.
    pub ciphers: Vec<Cipher>,
    /// PFS groups for CREATE_CHILD_SA, preferred first; empty means no PFS. Never sent in
    /// IKE_AUTH, which has no KE payload (RFC 7296 section 1.2).
    pub groups: Vec<DhGroup>,
    /// ESN modes, preferred first. Without an `esn`/`noesn` keyword both are offered, ESN
    /// first.
    pub esn: Vec<Esn>,
}

impl EspProposal {
    /// Parses a comma-separated list such as `aes256gcm16-ecp256,chacha20poly1305-noesn`.
    ///
    /// # Errors
    /// [`ProposalError`] naming the first bad token.
    pub fn parse_list(s: &str) -> Result<Vec<EspProposal>, ProposalError> {
        split_list(s).map(str::parse).collect()
    }

    /// The proposal as an SA payload proposal numbered `number` with our inbound `spi`; with
    /// `pfs` false the D-H transforms are left out (IKE_AUTH).
    pub fn to_wire(&self, number: u8, spi: u32, pfs: bool) -> Proposal {
        let mut transforms: Vec<Transform> =
            self.ciphers.iter().map(|&c| cipher_transform(c)).collect();
        if pfs {
            transforms.extend(self.groups.iter().map(|g| g.transform()));
        }
        transforms.extend(self.esn.iter().map(|e| e.transform()));
        Proposal {
            number,
            protocol: PROTO_ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms,
        }
    }
}

impl FromStr for EspProposal {
    type Err = ProposalError;

    fn from_str(s: &str) -> Result<EspProposal, ProposalError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(empty_error(s));
        }
        let mut p = EspProposal {
            ciphers: Vec::new(),
            groups: Vec::new(),
            esn: Vec::new(),
        };
        for token in s.split('-') {
            match keyword(token)? {
                Keyword::Cipher(c) => push_unique(&mut p.ciphers, c),
                Keyword::Group(g) => push_unique(&mut p.groups, g),
                Keyword::Esn(e) => push_unique(&mut p.esn, e),
                Keyword::Prf(_) => {
                    return Err(ProposalError {
                        token: token.to_string(),
                        reason: "a PRF belongs in IKE proposals, not ESP",
                    })
                }
            }
        }
        if p.ciphers.is_empty() {
            return Err(ProposalError {
                token: s.to_string(),
                reason: "no cipher (aes256gcm16 or chacha20poly1305)",
            });
        }
        if p.esn.is_empty() {
            p.esn = vec![Esn::Yes, Esn::No];
        }
        Ok(p)
    }
}

impl fmt::Display for EspProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<&str> = self
            .ciphers
            .iter()
            .map(|c| c.name())
            .chain(self.groups.iter().map(|g| g.name()))
            .collect();
        if self.esn != [Esn::Yes, Esn::No] {
            words.extend(self.esn.iter().map(|e| match e {
                Esn::Yes => "esn",
                Esn::No => "noesn",
            }));
        }
        f.write_str(&words.join("-"))
    }
}

/// The algorithms of an IKE SA.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct IkeAlgorithms {
    /// The SK payload cipher.
    pub cipher: Cipher,
    /// The PRF.
    pub prf: Prf,
    /// The Diffie-Hellman group.
    pub group: DhGroup,
}

impl fmt::Display for IkeAlgorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.cipher, self.prf, self.group)
    }
}

/// The algorithms of a child SA.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EspAlgorithms {
    /// The ESP cipher.
    pub cipher: Cipher,
    /// The PFS group used to create it, if any.
    pub group: Option<DhGroup>,
    /// Whether ESN is on.
    pub esn: bool,
}

impl fmt::Display for EspAlgorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cipher)?;
        if let Some(g) = self.group {
            write!(f, "-{g}")?;
        }
        f.write_str(if self.esn { "-esn" } else { "-noesn" })
    }
}

/// The first item of `local` (our preference order) that `remote` contains.
fn first_common<T: Copy + PartialEq>(local: &[T], remote: &[T]) -> Option<T> {
    local.iter().copied().find(|x| remote.contains(x))
}

/// Transforms of one type in a peer proposal, decoded; `None` entries are transforms braid
/// does not implement.
fn of_kind<T>(p: &Proposal, kind: u8, f: impl Fn(&Transform) -> Option<T>) -> (Vec<T>, bool) {
    let mut any = false;
    let mut out = Vec::new();
    for t in p.transforms.iter().filter(|t| t.kind == kind) {
        any = true;
        if let Some(x) = f(t) {
            out.push(x);
        }
    }
    (out, any)
}

/// A peer proposal contains an integrity transform other than NONE: not combinable with an
/// AEAD cipher (RFC 5282 section 8).
fn has_integrity(p: &Proposal) -> bool {
    p.transforms
        .iter()
        .any(|t| t.kind == TRANSFORM_INTEG && t.id != 0)
}

/// Responder side of RFC 7296 section 2.7 for the IKE SA: walks our proposals in order and
/// returns, for the first peer proposal that shares a cipher, PRF and group with it, that
/// proposal's number and the chosen algorithms.
pub fn select_ike(local: &[IkeProposal], remote: &[Proposal]) -> Option<(u8, IkeAlgorithms)> {
    for mine in local {
        for theirs in remote
            .iter()
            .filter(|p| p.protocol == PROTO_IKE && !has_integrity(p))
        {
            let (ciphers, _) = of_kind(theirs, TRANSFORM_ENCR, cipher_of);
            let (prfs, _) = of_kind(theirs, TRANSFORM_PRF, Prf::from_transform);
            let (groups, _) = of_kind(theirs, TRANSFORM_DH, DhGroup::from_transform);
            if let (Some(cipher), Some(prf), Some(group)) = (
                first_common(&mine.ciphers, &ciphers),
                first_common(&mine.prfs, &prfs),
                first_common(&mine.groups, &groups),
            ) {
                return Some((theirs.number, IkeAlgorithms { cipher, prf, group }));
            }
        }
    }
    None
}

/// The single-proposal answer a responder sends for chosen IKE algorithms.
pub fn ike_answer(number: u8, algs: IkeAlgorithms, spi: &[u8]) -> Proposal {
    IkeProposal {
        ciphers: vec![algs.cipher],
        prfs: vec![algs.prf],
        groups: vec![algs.group],
    }
    .to_wire(number, spi)
}

/// Initiator side: the algorithms of the responder's answer, if it is exactly one proposal,
/// with exactly one transform of each type, all offered by us.
pub fn accept_ike(offered: &[IkeProposal], answer: &[Proposal]) -> Option<IkeAlgorithms> {
    let [p] = answer else { return None };
    if p.protocol != PROTO_IKE || has_integrity(p) {
        return None;
    }
    let mine = offered.get(usize::from(p.number).checked_sub(1)?)?;
    let (ciphers, n_enc) = of_kind(p, TRANSFORM_ENCR, cipher_of);
    let (prfs, _) = of_kind(p, TRANSFORM_PRF, Prf::from_transform);
    let (groups, _) = of_kind(p, TRANSFORM_DH, DhGroup::from_transform);
    let count = |k| p.transforms.iter().filter(|t| t.kind == k).count();
    if !n_enc || count(TRANSFORM_ENCR) != 1 || count(TRANSFORM_PRF) != 1 || count(TRANSFORM_DH) != 1
    {
        return None;
    }
    let algs = IkeAlgorithms {
        cipher: *ciphers.first()?,
        prf: *prfs.first()?,
        group: *groups.first()?,
    };
    (mine.ciphers.contains(&algs.cipher)
        && mine.prfs.contains(&algs.prf)
        && mine.groups.contains(&algs.group))
    .then_some(algs)
}

/// An ESP proposal chosen by the responder: the peer's proposal number and SPI, and the
/// algorithms.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EspChoice {
    /// The peer's proposal number, echoed in the answer.
    pub number: u8,
    /// The peer's SPI (our outbound SPI).
    pub peer_spi: u32,
    /// The chosen algorithms.
    pub algs: EspAlgorithms,
}

fn esp_spi(p: &Proposal) -> Option<u32> {
    let spi: [u8; 4] = p.spi.as_slice().try_into().ok()?;
    let spi = u32::from_be_bytes(spi);
    (spi > 255).then_some(spi)
}

/// Responder side of RFC 7296 section 2.7 for a child SA. With `pfs` false (IKE_AUTH) D-H
/// transforms are ignored on both sides; with `pfs` true our proposal's groups must meet the
/// peer's (an empty group list on both sides meaning no PFS; NONE, ID 0, counts as no PFS).
/// A peer proposal without an ESN transform is treated as offering no-ESN only.
pub fn select_esp(local: &[EspProposal], remote: &[Proposal], pfs: bool) -> Option<EspChoice> {
    for mine in local {
        for theirs in remote
            .iter()
            .filter(|p| p.protocol == PROTO_ESP && !has_integrity(p))
        {
            let Some(peer_spi) = esp_spi(theirs) else {
                continue;
            };
            let (ciphers, _) = of_kind(theirs, TRANSFORM_ENCR, cipher_of);
            let (mut esns, any_esn) = of_kind(theirs, TRANSFORM_ESN, Esn::from_transform);
            if !any_esn {
                esns.push(Esn::No);
            }
            let (Some(cipher), Some(esn)) = (
                first_common(&mine.ciphers, &ciphers),
                first_common(&mine.esn, &esns),
            ) else {
                continue;
            };
            let group = if pfs {
                let (groups, _) = of_kind(theirs, TRANSFORM_DH, DhGroup::from_transform);
                let none_offered = theirs.transforms.iter().all(|t| t.kind != TRANSFORM_DH)
                    || theirs
                        .transforms
                        .iter()
                        .any(|t| t.kind == TRANSFORM_DH && t.id == 0);
                if mine.groups.is_empty() {
                    if !none_offered {
                        continue;
                    }
                    None
                } else {
                    match first_common(&mine.groups, &groups) {
                        Some(g) => Some(g),
                        None => continue,
                    }
                }
            } else {
                None
            };
            return Some(EspChoice {
                number: theirs.number,
                peer_spi,
                algs: EspAlgorithms {
                    cipher,
                    group,
                    esn: esn.enabled(),
                },
            });
        }
    }
    None
}

/// The single-proposal answer a responder sends for a chosen child SA, with our inbound SPI.
pub fn esp_answer(number: u8, algs: EspAlgorithms, spi: u32) -> Proposal {
    EspProposal {
        ciphers: vec![algs.cipher],
        groups: algs.group.into_iter().collect(),
        esn: vec![if algs.esn { Esn::Yes } else { Esn::No }],
    }
    .to_wire(number, spi, true)
}

/// Initiator side for a child SA: the answer's algorithms and the responder's SPI, if it is
/// one proposal with one transform of each type we sent, all offered by us in the proposal
/// with that number. `pfs` as for [`select_esp`].
pub fn accept_esp(offered: &[EspProposal], answer: &[Proposal], pfs: bool) -> Option<EspChoice> {
    let [p] = answer else { return None };
    if p.protocol != PROTO_ESP || has_integrity(p) {
        return None;
    }
    let peer_spi = esp_spi(p)?;
    let mine = offered.get(usize::from(p.number).checked_sub(1)?)?;
    let count = |k| p.transforms.iter().filter(|t| t.kind == k).count();
    let (ciphers, _) = of_kind(p, TRANSFORM_ENCR, cipher_of);
    let (esns, _) = of_kind(p, TRANSFORM_ESN, Esn::from_transform);
    let (groups, _) = of_kind(p, TRANSFORM_DH, DhGroup::from_transform);
    if count(TRANSFORM_ENCR) != 1 || count(TRANSFORM_ESN) > 1 || count(TRANSFORM_DH) > 1 {
        return None;
    }
    let cipher = *ciphers.first()?;
    let esn = match (count(TRANSFORM_ESN), esns.first()) {
        (0, _) => Esn::No,
        (_, Some(&e)) => e,
        (_, None) => return None,
    };
    let group = if pfs && !mine.groups.is_empty() {
        let g = *groups.first()?;
        mine.groups.contains(&g).then_some(g)?;
        Some(g)
    } else {
        if count(TRANSFORM_DH) == 1
            && p.transforms
                .iter()
                .any(|t| t.kind == TRANSFORM_DH && t.id != 0)
        {
            return None;
        }
        None
    };
    (mine.ciphers.contains(&cipher) && mine.esn.contains(&esn)).then_some(EspChoice {
        number: p.number,
        peer_spi,
        algs: EspAlgorithms {
            cipher,
            group,
            esn: esn.enabled(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strongswan_syntax() {
        let ike = IkeProposal::parse_list(
            "aes256gcm16-prfsha256-ecp256, chacha20poly1305-prfsha256-x25519",
        )
        .unwrap();
        assert_eq!(ike.len(), 2);
        assert_eq!(ike[0].ciphers, [Cipher::Aes256Gcm16]);
        assert_eq!(ike[0].groups, [DhGroup::Ecp256]);
        assert_eq!(ike[1].ciphers, [Cipher::ChaCha20Poly1305]);
        assert_eq!(ike[1].groups, [DhGroup::Curve25519]);
        assert_eq!(ike[1].to_string(), "chacha20poly1305-prfsha256-x25519");

        let esp = EspProposal::parse_list(
            "aes256gcm16-ecp256,aes256gcm16,chacha20poly1305-esn,aes256gcm16-noesn",
        )
        .unwrap();
        assert_eq!(esp[0].groups, [DhGroup::Ecp256]);
        assert_eq!(esp[0].esn, [Esn::Yes, Esn::No]);
        assert!(esp[1].groups.is_empty());
        assert_eq!(esp[2].esn, [Esn::Yes]);
        assert_eq!(esp[3].esn, [Esn::No]);
        assert_eq!(esp[3].to_string(), "aes256gcm16-noesn");
    }

    #[test]
    fn parse_errors_name_the_bad_token() {
        let e = IkeProposal::parse_list("aes256gcm16-prfsha256-ecp256,aes128-prfsha256-ecp256")
            .unwrap_err();
        assert_eq!(e.token, "aes128");
        assert!(e.to_string().contains("'aes128'"));
        let e = IkeProposal::parse_list("aes256gcm16-ecp256").unwrap_err();
        assert_eq!(e.token, "aes256gcm16-ecp256");
        assert!(e.reason.contains("PRF"));
        let e = EspProposal::parse_list("aes256gcm16-prfsha256").unwrap_err();
        assert_eq!(e.token, "prfsha256");
        let e = EspProposal::parse_list("aes256gcm16,,").unwrap_err();
        assert_eq!(e.reason, "empty proposal");
        let e = IkeProposal::parse_list("aes256gcm16-prfsha256-ecp256-esn").unwrap_err();
        assert_eq!(e.token, "esn");
        let e = EspProposal::parse_list("ecp256").unwrap_err();
        assert!(e.reason.contains("cipher"));
    }

    #[test]
    fn wire_form_follows_rfc_7296() {
        let p: IkeProposal = "aes256gcm16-prfsha256-ecp256".parse().unwrap();
        let w = p.to_wire(1, &[]);
        assert_eq!(w.transforms.len(), 3);
        assert_eq!(
            (
                w.transforms[0].kind,
                w.transforms[0].id,
                w.transforms[0].key_len
            ),
            (1, 20, Some(256))
        );
        assert_eq!((w.transforms[1].kind, w.transforms[1].id), (2, 5));
        assert_eq!((w.transforms[2].kind, w.transforms[2].id), (4, 19));
        let e: EspProposal = "chacha20poly1305-x25519".parse().unwrap();
        let w = e.to_wire(2, 0x1234_5678, true);
        assert_eq!(w.spi, [0x12, 0x34, 0x56, 0x78]);
        let kinds: Vec<(u8, u16, Option<u16>)> = w
            .transforms
            .iter()
            .map(|t| (t.kind, t.id, t.key_len))
            .collect();
        assert_eq!(
            kinds,
            [(1, 28, None), (4, 31, None), (5, 1, None), (5, 0, None)]
        );
        let w = e.to_wire(2, 0x1234_5678, false);
        assert!(w.transforms.iter().all(|t| t.kind != TRANSFORM_DH));
    }

    #[test]
    fn selection_prefers_local_order_and_checks_answers() {
        let offered = IkeProposal::parse_list(
            "chacha20poly1305-prfsha256-x25519,aes256gcm16-prfsha256-ecp256",
        )
        .unwrap();
        let wire: Vec<Proposal> = offered
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, &[]))
            .collect();
        let local = IkeProposal::parse_list("aes256gcm16-prfsha256-ecp256").unwrap();
        let (n, algs) = select_ike(&local, &wire).unwrap();
        assert_eq!(n, 2);
        assert_eq!(algs.group, DhGroup::Ecp256);
        let answer = ike_answer(n, algs, &[]);
        assert_eq!(
            accept_ike(&offered, std::slice::from_ref(&answer)),
            Some(algs)
        );
        // An answer naming a proposal number whose contents we did not offer is refused.
        let mut wrong = answer;
        wrong.number = 1;
        assert_eq!(accept_ike(&offered, &[wrong]), None);
        let none = IkeProposal::parse_list("aes256gcm16-prfsha256-x25519").unwrap();
        let only_chacha = [wire[0].clone()];
        assert_eq!(select_ike(&none, &only_chacha), None);
    }

    #[test]
    fn esp_selection_honours_esn_and_pfs() {
        let offered = EspProposal::parse_list("aes256gcm16-ecp256-noesn").unwrap();
        let wire = vec![offered[0].to_wire(1, 0xabcd_0001, true)];
        let local = EspProposal::parse_list("aes256gcm16-ecp256").unwrap();
        let c = select_esp(&local, &wire, true).unwrap();
        assert_eq!(c.peer_spi, 0xabcd_0001);
        assert!(!c.algs.esn);
        assert_eq!(c.algs.group, Some(DhGroup::Ecp256));
        let answer = esp_answer(c.number, c.algs, 0x9999_0000);
        let back = accept_esp(&offered, &[answer], true).unwrap();
        assert_eq!(back.peer_spi, 0x9999_0000);
        assert_eq!(back.algs, c.algs);
        // A responder without PFS refuses a PFS-only offer; in IKE_AUTH groups are ignored.
        let nopfs = EspProposal::parse_list("aes256gcm16").unwrap();
        assert_eq!(select_esp(&nopfs, &wire, true), None);
        assert!(select_esp(&nopfs, &wire, false).is_some());
        let esn_only = EspProposal::parse_list("aes256gcm16-esn").unwrap();
        assert_eq!(select_esp(&esn_only, &wire, false), None);
    }
}
