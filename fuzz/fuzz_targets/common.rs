//! Shared by the targets: chunk sizes chosen by the input.

/// Splits `input` into chunks whose sizes follow from `seed` (one of the
/// input's own bytes, so libFuzzer mutates the split too): the low two bits
/// pick the largest chunk (1, 4, 17 or 257 bytes), the rest seed a
/// xorshift that draws each size. Seed 0 feeds one byte at a time.
pub fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let max = [1usize, 4, 17, 257][(seed & 3) as usize];
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (1 + x as usize % max).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}
