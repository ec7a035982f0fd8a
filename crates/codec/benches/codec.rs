//! Encode + decode of a 1 MiB f32 tensor (262,144 elements), per codec.
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

criterion_group!(benches, bench);
criterion_main!(benches);
