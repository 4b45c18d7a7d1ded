//! SHA-256, the one digest valet computes for its own ends: noticing that a
//! file changed, token fingerprints for logs, keys of in-memory maps.
//! (Signatures use their own algorithms through their crates.)

/// The SHA-256 of `b`.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The SHA-256 of `b`, as lowercase hex.
pub fn sha256_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    sha256(b)
        .iter()
        .fold(String::with_capacity(64), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_abc_is_the_fips_180_vector() {
        let d = super::sha256(b"abc");
        assert_eq!(
            d[..8],
            [0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea],
            "FIPS 180-2 appendix B.1"
        );
    }
}
