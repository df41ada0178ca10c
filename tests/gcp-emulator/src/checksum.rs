//! CRC32C (Castagnoli), the checksum Secret Manager keeps for every payload (CONTRACT §6).
//!
//! Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF — the `crc32c`
//! crate's algorithm. Exposed so tests can compute what a payload's `dataCrc32c` should be.

/// The CRC32C of `data`, as Secret Manager reports it in `dataCrc32c` (a decimal int64).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::crc32c;

    #[test]
    fn contract_test_vectors() {
        assert_eq!(crc32c(b"123456789"), 3_808_858_755);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b"hello"), 2_591_144_780);
        assert_eq!(crc32c(b""), 0);
    }
}
