//! No input makes the scanner panic: seeds of every format, mutated (bit flips, truncation,
//! duplication, splicing) with a fixed-seed generator, through every parser. The fuzz targets in
//! `fuzz/` run the same entry points under libFuzzer.

mod util;

use palisade_scan::fuzzing;
use util::{Pickle, pb, safetensors, torch_state_dict, zip_of};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let sd = torch_state_dict();
    let mut onnx = Vec::new();
    pb::field_varint(1, 8, &mut onnx);
    let mut g = Vec::new();
    pb::field_bytes(1, b"\x22\x04Relu", &mut g);
    pb::field_bytes(7, &g, &mut onnx);
    vec![
        sd.clone(),
        Pickle::os_system("id"),
        zip_of(
            &[("archive/data.pkl", &sd), ("archive/data/0", &[0u8; 16])],
            false,
        ),
        zip_of(
            &[
                ("archive/data.pkl", &sd),
                ("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O'}"),
            ],
            true,
        ),
        safetensors(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
            .to_vec(),
        onnx,
        b"\x89HDF\r\n\x1a\n model_config {\"class_name\": \"Lambda\"}".to_vec(),
    ]
}

fn mutate(rng: &mut Rng, mut b: Vec<u8>, pool: &[Vec<u8>]) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0x00, 0xff, 0x7f, 0x80, b'(', b'.', 0x95, 0x93][rng.below(8)];
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                let j = (i + rng.below(16)).min(b.len());
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            4 => {
                let other = &pool[rng.below(pool.len())];
                let i = rng.below(b.len() + 1);
                let j = rng.below(other.len() + 1);
                b.splice(i..i, other[..j].iter().copied());
            }
            _ => {
                let i = rng.below(b.len() + 1);
                b.splice(i..i, (rng.next() as u32).to_le_bytes());
            }
        }
    }
    b
}

#[test]
fn mutated_inputs_never_panic() {
    let pool = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let seed = pool[round % pool.len()].clone();
        let input = mutate(&mut rng, seed, &pool);
        fuzzing::any(&input);
        fuzzing::pickle(&input);
        fuzzing::zip(&input);
        fuzzing::safetensors(&input);
        fuzzing::gguf(&input);
    }
}
