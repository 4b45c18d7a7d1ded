//! RSA-SHA1 (RFC 5849 §3.4.3): RSASSA-PKCS1-v1_5 with SHA-1.
//!
//! aws-lc-rs offers SHA-1 RSA for verification only, so signing calls
//! aws-lc, the library underneath it, directly through aws-lc-sys: the same
//! crypto stack as the rest of valet, rather than the `rsa` crate (whose
//! private-key operations are not constant-time, RUSTSEC-2023-0071). This is
//! valet's only unsafe code: parse a key once, one `RSA_sign` per request.
#![allow(unsafe_code)]

use aws_lc_sys as sys;
use std::ptr::NonNull;

/// An RSA private key for RSA-SHA1 signatures.
pub struct RsaSha1Key {
    rsa: NonNull<sys::RSA>,
}

// SAFETY: aws-lc RSA objects may be used for signing from several threads at
// once (blinding state is locked inside aws-lc), and the key is never mutated.
unsafe impl Send for RsaSha1Key {}
unsafe impl Sync for RsaSha1Key {}

impl std::fmt::Debug for RsaSha1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSha1Key([redacted])")
    }
}

/// Smallest accepted modulus, bits. (The OAuth test case uses 1024; so do
/// some old providers. Smaller keys are refused outright.)
const MIN_BITS: u32 = 1024;

impl RsaSha1Key {
    /// A PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<RsaSha1Key, String> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        let bytes = der.secret_der();
        let mut p = bytes.as_ptr();
        let len = std::os::raw::c_long::try_from(bytes.len()).map_err(|_| "key too large")?;
        // SAFETY: `p` points at `len` readable bytes; aws-lc allocates a new
        // EVP_PKEY (or returns null) and only advances `p`.
        let pkey = unsafe { sys::d2i_AutoPrivateKey(std::ptr::null_mut(), &mut p, len) };
        let Some(pkey) = NonNull::new(pkey) else {
            return Err("the private key does not parse".into());
        };
        // SAFETY: `pkey` is a valid EVP_PKEY we own; get1 returns a new
        // reference to its RSA (or null), then we drop our EVP_PKEY reference.
        let rsa = unsafe {
            let rsa = if sys::EVP_PKEY_id(pkey.as_ptr()) == sys::EVP_PKEY_RSA {
                sys::EVP_PKEY_get1_RSA(pkey.as_ptr())
            } else {
                std::ptr::null_mut()
            };
            sys::EVP_PKEY_free(pkey.as_ptr());
            rsa
        };
        let rsa = NonNull::new(rsa).ok_or("the private key is not an RSA key")?;
        let key = RsaSha1Key { rsa };
        // SAFETY: `rsa` is a valid RSA object owned by `key`.
        let bits = unsafe { sys::RSA_size(key.rsa.as_ptr()) } * 8;
        if bits < MIN_BITS {
            return Err(format!(
                "the RSA key has {bits} bits; at least {MIN_BITS} are required"
            ));
        }
        Ok(key)
    }

    /// The signature of `msg` (RSASSA-PKCS1-v1_5, SHA-1), raw bytes.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, msg);
        let d = digest.as_ref();
        // SAFETY: `rsa` is valid for the life of `self`.
        let size = unsafe { sys::RSA_size(self.rsa.as_ptr()) } as usize;
        let mut out = vec![0u8; size];
        let mut out_len: std::os::raw::c_uint = 0;
        // SAFETY: `d` is a 20-byte SHA-1 digest, `out` has RSA_size bytes as
        // RSA_sign requires, and `rsa` holds a private key (checked at load).
        let ok = unsafe {
            sys::RSA_sign(
                sys::NID_sha1,
                d.as_ptr(),
                d.len(),
                out.as_mut_ptr(),
                &mut out_len,
                self.rsa.as_ptr(),
            )
        };
        assert_eq!(ok, 1, "RSA_sign failed with a valid key");
        out.truncate(out_len as usize);
        out
    }
}

impl Drop for RsaSha1Key {
    fn drop(&mut self) {
        // SAFETY: we own one reference to `rsa`, released exactly once.
        unsafe { sys::RSA_free(self.rsa.as_ptr()) }
    }
}
