//! Encode + decode of a 1 MiB f32 tensor (262,144 elements), per element-wise codec; and of a
//! 1×3×224×224 image (an ImageNet-sized input) with JPEG at three qualities.
//! And encode, decode apart, of the 200 KiB boundary tensor `cleave bench rpc` sends.
//! Run: `cargo bench -p cleave-codec --bench codec`.

use cleave_codec::{Codec, EncodeOptions, decode, encode};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let shape = [1usize, 64, 64, 64];
    let n: usize = shape.iter().product();
    // Post-ReLU-like activations: half zeros, the rest spread.
    let data: Vec<f32> =
        (0..n).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 100.0 - 5.0).map(|x| x.max(0.0)).collect();
    let mut g = c.benchmark_group("encode_decode_1MiB");
    g.throughput(Throughput::Bytes((n * 4) as u64));
    for codec in Codec::ALL {
        for (label, per_channel, lz4) in [("", false, false), ("+lz4", false, true)] {
            g.bench_with_input(BenchmarkId::new(format!("{codec}{label}"), n), &data, |b, data| {
                b.iter(|| decode(&encode(data, &shape, EncodeOptions { codec, per_channel, lz4 }).unwrap()).unwrap())
            });
        }
    }
    g.finish();
}

/// A 224 × 224 RGB picture, ImageNet-normalised: smooth gradients, a few discs and stripes (a
/// photo-like mix of flat areas and edges; random noise would be JPEG's worst case).
fn picture() -> Vec<f32> {
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut x = Vec::with_capacity(3 * 224 * 224);
    for c in 0..3 {
        for y in 0..224 {
            for xx in 0..224 {
                let (fx, fy) = (xx as f32, y as f32);
                let mut p = 60.0 + 0.5 * fx + 0.3 * fy + 20.0 * c as f32;
                for (k, (cx, cy, r)) in
                    [(60.0, 70.0, 30.0), (150.0, 120.0, 45.0), (100.0, 180.0, 20.0)].iter().enumerate()
                {
                    if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                        p = 30.0 + 70.0 * ((k + c) % 3) as f32;
                    }
                }
                if (xx / 8) % 2 == 0 && y > 200 {
                    p = 240.0;
                }
                x.push((p.clamp(0.0, 255.0) / 255.0 - mean[c]) / std[c]);
            }
        }
    }
    x
}

fn bench_jpeg(c: &mut Criterion) {
    let shape = [1usize, 3, 224, 224];
    let data = picture();
    let mut g = c.benchmark_group("jpeg_encode_decode_1x3x224x224");
    g.throughput(Throughput::Elements(224 * 224));
    for codec in Codec::JPEG {
        g.bench_with_input(BenchmarkId::new(codec.name(), "picture"), &data, |b, data| {
            b.iter(|| decode(&encode(data, &shape, EncodeOptions::new(codec)).unwrap()).unwrap())
        });
    }
    g.finish();
}

/// Encode and decode apart, on the 200 KiB boundary of `cleave bench rpc` (1×50×32×32 f32):
/// the device pays the first, the server the second.
fn bench_boundary(c: &mut Criterion) {
    let shape = [1usize, 50, 32, 32];
    let n: usize = shape.iter().product();
    let data: Vec<f32> =
        (0..n).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 100.0 - 5.0).map(|x| x.max(0.0)).collect();
    let mut g = c.benchmark_group("boundary_200KiB");
    g.throughput(Throughput::Bytes((n * 4) as u64));
    for codec in [Codec::Fp32, Codec::Fp16, Codec::Int8, Codec::Int4] {
        let opts = EncodeOptions::new(codec);
        g.bench_function(BenchmarkId::new("encode", codec), |b| b.iter(|| encode(&data, &shape, opts).unwrap()));
        let enc = encode(&data, &shape, opts).unwrap();
        g.bench_function(BenchmarkId::new("decode", codec), |b| b.iter(|| decode(&enc).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench, bench_jpeg, bench_boundary);
criterion_main!(benches);
