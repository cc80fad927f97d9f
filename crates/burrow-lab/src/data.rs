//! Test data: seeded pseudo-random bytes, written fast (a xorshift runs at
//! several GB/s; /dev/urandom manages ~160 MB/s here).

use std::io::Write;
use std::path::Path;

/// Writes `size` bytes drawn from `seed` to `path`. The same seed gives the same
/// bytes.
pub fn write_random(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()
}
