//! Zero-allocation STUN message writer.
//!
//! Writes a message into a caller-provided buffer: header, attributes with
//! their padding, and the trailing MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT,
//! keeping the header's length field right at each step (RFC 8489 §14.5, §14.7
//! compute over the length as it stands when the attribute is added).

use std::net::{IpAddr, SocketAddr};

use crate::raw::{self, attr, Class, FAMILY_IPV4, FAMILY_IPV6, HEADER_LEN, MAGIC_COOKIE};

/// The buffer given to a [`Writer`] is too small for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output buffer too small for the STUN message")]
pub struct BufferTooSmall;

/// Writes one STUN message into a borrowed buffer.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    /// Start a message of `method` and `class` with `transaction_id`.
    pub fn new(
        buf: &'a mut [u8],
        method: u16,
        class: Class,
        transaction_id: &[u8; 12],
    ) -> Result<Self, BufferTooSmall> {
        if buf.len() < HEADER_LEN {
            return Err(BufferTooSmall);
        }
        buf[0..2].copy_from_slice(&raw::message_type(method, class).to_be_bytes());
        buf[2..4].copy_from_slice(&0u16.to_be_bytes());
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(transaction_id);
        Ok(Writer {
            buf,
            len: HEADER_LEN,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether only the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// The transaction ID of the message being written.
    pub fn transaction_id(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[8..20]);
        t
    }

    fn set_length(&mut self) {
        let l = (self.len - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&l.to_be_bytes());
    }

    /// Reserve an attribute of `value_len` bytes and return its value slice
    /// (padding is zeroed and accounted for).
    pub fn attribute(&mut self, typ: u16, value_len: usize) -> Result<&mut [u8], BufferTooSmall> {
        let padded = (value_len + 3) & !3;
        let end = self.len + 4 + padded;
        if end > self.buf.len() || end - HEADER_LEN > u16::MAX as usize {
            return Err(BufferTooSmall);
        }
        let start = self.len;
        self.buf[start..start + 2].copy_from_slice(&typ.to_be_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(value_len as u16).to_be_bytes());
        self.buf[start + 4 + value_len..end].fill(0);
        self.len = end;
        self.set_length();
        Ok(&mut self.buf[start + 4..start + 4 + value_len])
    }

    /// Add an attribute with the given value bytes.
    pub fn bytes(&mut self, typ: u16, value: &[u8]) -> Result<(), BufferTooSmall> {
        self.attribute(typ, value.len())?.copy_from_slice(value);
        Ok(())
    }

    /// Add a 32-bit attribute (LIFETIME, CHANGE-REQUEST, REQUESTED-TRANSPORT...).
    pub fn u32(&mut self, typ: u16, v: u32) -> Result<(), BufferTooSmall> {
        self.bytes(typ, &v.to_be_bytes())
    }

    /// Add a 64-bit attribute (ICE-CONTROLLING, RESERVATION-TOKEN...).
    pub fn u64(&mut self, typ: u16, v: u64) -> Result<(), BufferTooSmall> {
        self.bytes(typ, &v.to_be_bytes())
    }

    /// Add a plain address attribute (RFC 8489 §14.1).
    pub fn address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), BufferTooSmall> {
        let (family, len) = match addr.ip() {
            IpAddr::V4(_) => (FAMILY_IPV4, 8),
            IpAddr::V6(_) => (FAMILY_IPV6, 20),
        };
        let v = self.attribute(typ, len)?;
        v[0] = 0;
        v[1] = family;
        v[2..4].copy_from_slice(&addr.port().to_be_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => v[4..8].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => v[4..20].copy_from_slice(&ip.octets()),
        }
        Ok(())
    }

    /// Add an XOR address attribute (RFC 8489 §14.2).
    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), BufferTooSmall> {
        let tid = self.transaction_id();
        self.address(typ, raw::xor_address(addr, &tid))
    }

    /// Add ERROR-CODE (RFC 8489 §14.8). `reason` may be empty: natkit sends no
    /// reason phrases to unauthenticated clients, to keep answers small.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), BufferTooSmall> {
        let r = reason.as_bytes();
        let v = self.attribute(attr::ERROR_CODE, 4 + r.len())?;
        v[0] = 0;
        v[1] = 0;
        v[2] = (code / 100) as u8;
        v[3] = (code % 100) as u8;
        v[4..].copy_from_slice(r);
        Ok(())
    }

    /// Add UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> Result<(), BufferTooSmall> {
        let v = self.attribute(attr::UNKNOWN_ATTRIBUTES, types.len() * 2)?;
        for (i, t) in types.iter().enumerate() {
            v[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        Ok(())
    }

    /// Add MESSAGE-INTEGRITY (RFC 8489 §14.5) keyed with `key`.
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), BufferTooSmall> {
        let start = self.len;
        self.attribute(attr::MESSAGE_INTEGRITY, 20)?;
        let mac = crate::integrity::hmac_sha1(key, &self.buf[..start]);
        self.buf[start + 4..start + 24].copy_from_slice(&mac);
        Ok(())
    }

    /// Add MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) keyed with `key`.
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), BufferTooSmall> {
        let start = self.len;
        self.attribute(attr::MESSAGE_INTEGRITY_SHA256, 32)?;
        let mac = crate::integrity::hmac_sha256(key, &self.buf[..start]);
        self.buf[start + 4..start + 36].copy_from_slice(&mac);
        Ok(())
    }

    /// Add FINGERPRINT (RFC 8489 §14.7) and return the finished length.
    pub fn fingerprint(mut self) -> Result<usize, BufferTooSmall> {
        let start = self.len;
        self.attribute(attr::FINGERPRINT, 4)?;
        let fp = crate::integrity::fingerprint(&self.buf[..start]);
        self.buf[start + 4..start + 8].copy_from_slice(&fp.to_be_bytes());
        Ok(self.len)
    }

    /// Finish the message and return its length.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{parse_datagram, Attributes};

    #[test]
    fn writes_parseable_message_with_padding() {
        let mut buf = [0u8; 128];
        let tid = [9u8; 12];
        let mut w = Writer::new(&mut buf, raw::method::BINDING, Class::Error, &tid).unwrap();
        w.error_code(420, "").unwrap();
        w.unknown_attributes(&[0x0026]).unwrap();
        w.xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.7:9".parse().unwrap())
            .unwrap();
        let n = w.finish();
        let h = parse_datagram(&buf[..n]).unwrap();
        assert_eq!(h.class(), Class::Error);
        let attrs: Vec<_> = Attributes::new(&buf[..n], &h).map(|a| a.unwrap()).collect();
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0].value, &[0, 0, 4, 20]);
        assert_eq!(attrs[1].value, &[0x00, 0x26]);
        assert_eq!(
            raw::decode_xor_address(attrs[2].value, &tid),
            Some("192.0.2.7:9".parse().unwrap())
        );
    }

    #[test]
    fn too_small_buffer_is_an_error_not_a_panic() {
        let mut buf = [0u8; 28];
        let mut w = Writer::new(&mut buf, 1, Class::Request, &[0; 12]).unwrap();
        assert_eq!(w.u32(attr::PRIORITY, 1), Ok(()));
        assert_eq!(w.u32(attr::PRIORITY, 1), Err(BufferTooSmall));
        let mut small = [0u8; 10];
        assert!(Writer::new(&mut small, 1, Class::Request, &[0; 12]).is_err());
    }
}
