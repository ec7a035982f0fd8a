//! The `codec_decode` target's input format: a short header describing an [`Encoded`] (codec,
//! compression, shape, quantization parameters), then the payload. Shared by the target (which
//! parses it) and the `seeds` package (which writes real encodings in it).
//!
//! Every byte string parses (missing bytes read as zero), so the fuzzer never wastes an input
//! on framing, and one mutated byte in the header changes one field:
//!
//! ```text
//! byte 0   codec: 0 fp32, 1 fp16, 2 bf16, 3 int8, 4 int4, 5 int2, 6..=105 jpeg1..=jpeg100
//!          (larger values wrap modulo 106)
//! byte 1   bit 0: lz4; bits 1-2: parameters: 0 none, 1 per-tensor, 2 or 3 per-channel
//! byte 2   rank (modulo 9: 0..=8)
//! dims     rank × LEB128 varint (u64, up to 10 bytes: huge dimensions are reachable)
//! params   per-tensor: scale (f32 LE), zero point (u8)
//!          per-channel: axis (varint), count (varint, capped by the bytes left), count × (scale
//!          f32 LE, zero point u8)
//! payload  the rest
//! ```

use cleave_codec::{Codec, Encoded, Quant};

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }

    fn f32(&mut self) -> f32 {
        f32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

fn codec_from_byte(b: u8) -> Codec {
    match b % 106 {
        i @ 0..=5 => Codec::ALL[i as usize],
        q => Codec::jpeg(q - 5).expect("1..=100"),
    }
}

fn codec_to_byte(c: Codec) -> u8 {
    match c {
        Codec::Jpeg(q) => q.get() + 5,
        c => Codec::ALL.iter().position(|&a| a == c).expect("an element-wise codec") as u8,
    }
}

/// Parses any bytes into an encoded tensor.
pub fn from_bytes(data: &[u8]) -> Encoded {
    let mut r = Reader(data);
    let codec = codec_from_byte(r.byte());
    let flags = r.byte();
    let rank = r.byte() % 9;
    let shape = (0..rank).map(|_| r.varint() as usize).collect();
    let quant = match (flags >> 1) & 3 {
        0 => None,
        1 => Some(Quant::PerTensor { scale: r.f32(), zero_point: r.byte() }),
        _ => {
            let axis = r.varint() as usize;
            let count = (r.varint() as usize).min(r.0.len() / 5);
            let (scales, zero_points) = (0..count).map(|_| (r.f32(), r.byte())).unzip();
            Some(Quant::PerChannel { axis, scales, zero_points })
        }
    };
    Encoded { codec, shape, quant, lz4: flags & 1 != 0, payload: r.0.to_vec() }
}

/// Writes an encoded tensor so that [`from_bytes`] gives it back.
#[allow(dead_code)] // used by the seeds package only
pub fn to_bytes(enc: &Encoded) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    assert!(enc.shape.len() <= 8, "rank {} does not fit the format", enc.shape.len());
    let kind = match enc.quant {
        None => 0,
        Some(Quant::PerTensor { .. }) => 1,
        Some(Quant::PerChannel { .. }) => 2,
    };
    let mut out = vec![codec_to_byte(enc.codec), u8::from(enc.lz4) | (kind << 1), enc.shape.len() as u8];
    for &d in &enc.shape {
        varint(&mut out, d as u64);
    }
    match &enc.quant {
        None => {}
        Some(Quant::PerTensor { scale, zero_point }) => {
            out.extend_from_slice(&scale.to_le_bytes());
            out.push(*zero_point);
        }
        Some(Quant::PerChannel { axis, scales, zero_points }) => {
            assert_eq!(scales.len(), zero_points.len());
            varint(&mut out, *axis as u64);
            varint(&mut out, scales.len() as u64);
            for (s, z) in scales.iter().zip(zero_points) {
                out.extend_from_slice(&s.to_le_bytes());
                out.push(*z);
            }
        }
    }
    out.extend_from_slice(&enc.payload);
    out
}
