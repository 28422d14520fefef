//! Pairing tickets: what the QR code carries.
//!
//! `discless:pair/<BASE32>`: a compact binary record (version, PeerId, addresses, a 128-bit
//! one-time token, expiry, role, display name and, from version 2, the issuer's X25519 key and
//! card signature) in RFC 4648 base32, which QR codes store in their dense alphanumeric mode. It
//! holds no PHI: a patient binding stays on the issuer, keyed by the token. With the card the
//! scanner can seal its pairing request to an issuer that is offline and leave it at the
//! issuer's relay.

use libp2p::{Multiaddr, PeerId};

use super::card::DeviceCard;
use crate::keystore::Role;

pub const SCHEME: &str = "discless:pair/";
const VERSION: u8 = 2;
const MAX_NAME: usize = 64;
const MAX_ADDRS: usize = 8;

/// A decoded ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub token: [u8; 16],
    pub expires_unix: u64,
    pub role: Role,
    pub name: String,
    /// The issuer's agreement key and card signature ([`DeviceCard::compact`]).
    pub card: Option<([u8; 32], Vec<u8>)>,
}

/// A string that is not a ticket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketError {
    #[error("not a Discless pairing ticket (it should start with {SCHEME})")]
    Scheme,
    #[error("malformed pairing ticket: {0}")]
    Malformed(&'static str),
    #[error("pairing ticket version {0} is not supported by this node")]
    Version(u8),
}

impl Ticket {
    pub fn encode(&self) -> String {
        let mut b = vec![VERSION];
        let pid = self.peer_id.to_bytes();
        b.push(pid.len() as u8);
        b.extend_from_slice(&pid);
        b.extend_from_slice(&self.token);
        b.extend_from_slice(&self.expires_unix.to_be_bytes());
        b.push(self.role.as_u8());
        let name = truncate(&self.name, MAX_NAME);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        let addrs: Vec<Vec<u8>> = self
            .addrs
            .iter()
            .map(|a| a.to_vec())
            .filter(|a| a.len() <= 255)
            .take(MAX_ADDRS)
            .collect();
        b.push(addrs.len() as u8);
        for a in addrs {
            b.push(a.len() as u8);
            b.extend_from_slice(&a);
        }
        // A truncated name would not match the card's signature: leave the card out then.
        match &self.card {
            Some((agreement, sig)) if name.len() == self.name.len() && sig.len() <= 255 => {
                b.push(1);
                b.extend_from_slice(agreement);
                b.push(sig.len() as u8);
                b.extend_from_slice(sig);
            }
            _ => b.push(0),
        }
        format!("{SCHEME}{}", data_encoding::BASE32_NOPAD.encode(&b))
    }

    pub fn decode(s: &str) -> Result<Self, TicketError> {
        let s = s.trim();
        if s.len() < SCHEME.len() || !s[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
            return Err(TicketError::Scheme);
        }
        let body = s[SCHEME.len()..].to_ascii_uppercase();
        let raw = data_encoding::BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| TicketError::Malformed("not base32 (was it copied whole?)"))?;
        let mut r = Reader(&raw);
        let v = r.u8()?;
        if v != 1 && v != VERSION {
            return Err(TicketError::Version(v));
        }
        let n = r.u8()? as usize;
        let peer_id =
            PeerId::from_bytes(r.take(n)?).map_err(|_| TicketError::Malformed("peer id"))?;
        let token: [u8; 16] = r
            .take(16)?
            .try_into()
            .map_err(|_| TicketError::Malformed("token"))?;
        let expires_unix = u64::from_be_bytes(
            r.take(8)?
                .try_into()
                .map_err(|_| TicketError::Malformed("expiry"))?,
        );
        let role = Role::from_u8(r.u8()?).ok_or(TicketError::Malformed("role"))?;
        let n = r.u8()? as usize;
        let name = std::str::from_utf8(r.take(n)?)
            .map_err(|_| TicketError::Malformed("name is not UTF-8"))?
            .to_owned();
        let count = r.u8()? as usize;
        if count > MAX_ADDRS {
            return Err(TicketError::Malformed("too many addresses"));
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let n = r.u8()? as usize;
            addrs.push(
                Multiaddr::try_from(r.take(n)?.to_vec())
                    .map_err(|_| TicketError::Malformed("address"))?,
            );
        }
        let card = match (v, r.0.is_empty()) {
            (1, _) | (_, true) => None,
            _ => match r.u8()? {
                0 => None,
                1 => {
                    let agreement: [u8; 32] = r
                        .take(32)?
                        .try_into()
                        .map_err(|_| TicketError::Malformed("agreement key"))?;
                    let n = r.u8()? as usize;
                    Some((agreement, r.take(n)?.to_vec()))
                }
                _ => return Err(TicketError::Malformed("card flag")),
            },
        };
        if !r.0.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        Ok(Self {
            peer_id,
            addrs,
            token,
            expires_unix,
            role,
            name,
            card,
        })
    }

    /// The issuer's device card, when the ticket carries one that verifies.
    pub fn issuer_card(&self) -> Option<DeviceCard> {
        let (agreement, sig) = self.card.as_ref()?;
        let card =
            DeviceCard::from_compact(&self.peer_id, agreement, sig, &self.name, self.role).ok()?;
        card.verify(&self.peer_id).ok()?;
        Some(card)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, TicketError> {
        Ok(self.take(1)?[0])
    }
}

/// The QR code of a ticket in the three forms people use.
pub mod qr {
    use qrcode::{Color, EcLevel, QrCode};

    fn code(text: &str) -> Result<QrCode, String> {
        QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(|e| e.to_string())
    }

    /// Unicode half blocks, two modules per character cell, with a quiet zone; readable by a
    /// phone camera from a terminal with a dark-on-light or light-on-dark theme alike because the
    /// quiet zone is drawn too.
    pub fn terminal(text: &str) -> Result<String, String> {
        Ok(code(text)?
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build())
    }

    pub fn svg(text: &str) -> Result<String, String> {
        Ok(code(text)?
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(256, 256)
            .quiet_zone(true)
            .build())
    }

    /// A greyscale PNG, `scale` pixels per module, with a 4-module quiet zone.
    pub fn png(text: &str, scale: u32) -> Result<Vec<u8>, String> {
        let c = code(text)?;
        let modules = c.width() as u32;
        let colors = c.to_colors();
        let quiet = 4;
        let side = (modules + 2 * quiet) * scale;
        let mut pixels = vec![255u8; (side * side) as usize];
        for (i, color) in colors.iter().enumerate() {
            if *color != Color::Dark {
                continue;
            }
            let (mx, my) = (i as u32 % modules, i as u32 / modules);
            for dy in 0..scale {
                let y = (my + quiet) * scale + dy;
                let row = (y * side) as usize;
                let x0 = ((mx + quiet) * scale) as usize;
                pixels[row + x0..row + x0 + scale as usize].fill(0);
            }
        }
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&pixels).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            peer_id: libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
            addrs: vec![
                "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
                "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap(),
            ],
            token: [7; 16],
            expires_unix: 1_900_000_000,
            role: Role::Clinic,
            name: "Riverside Clinic — Radiology".into(),
            card: Some(([9; 32], vec![3; 64])),
        }
    }

    #[test]
    fn round_trips_case_insensitively() {
        let t = sample();
        let s = t.encode();
        assert!(s.starts_with(SCHEME));
        assert_eq!(Ticket::decode(&s).unwrap(), t);
        assert_eq!(Ticket::decode(&s.to_lowercase()).unwrap(), t);
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap(), t);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(Ticket::decode("https://x"), Err(TicketError::Scheme));
        assert!(Ticket::decode("discless:pair/!!!").is_err());
        let s = sample().encode();
        for cut in 0..s.len() {
            let _ = Ticket::decode(&s[..cut]);
        }
        // Every single-character change either fails or decodes to something else.
        let body = s.as_bytes()[SCHEME.len()..].to_vec();
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let _ = Ticket::decode(&format!("{SCHEME}{}", String::from_utf8(b).unwrap()));
        }
    }

    #[test]
    fn the_issuer_card_travels_and_a_forged_one_is_ignored() {
        let keys = crate::keystore::Keys::generate_for_tests("Dr Grey", Role::Doctor);
        let card = DeviceCard::new(&keys);
        let mut t = sample();
        t.peer_id = keys.peer_id();
        t.name = card.name.clone();
        t.role = card.role;
        t.card = card.compact();
        let back = Ticket::decode(&t.encode()).unwrap();
        assert_eq!(back.issuer_card(), Some(card));
        // A signature that is not the issuer's yields no card (the scanner then cannot pair
        // while the issuer is offline).
        assert_eq!(sample().issuer_card(), None);
        // Without a card the ticket is a version-1 ticket in all but its version byte.
        t.card = None;
        assert_eq!(Ticket::decode(&t.encode()).unwrap().card, None);
    }

    #[test]
    fn qr_renders_in_every_form() {
        let s = sample().encode();
        assert!(qr::terminal(&s).unwrap().contains('▀'));
        assert!(qr::svg(&s).unwrap().starts_with("<?xml"));
        assert!(qr::png(&s, 4).unwrap().starts_with(b"\x89PNG"));
    }
}
