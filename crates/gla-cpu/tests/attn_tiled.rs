//! The tiled attention path is deterministic: bitwise the same forward and backward on 1 and
//! 3 threads (the tasks own disjoint blocks and sum in a fixed order).

use gla_core::{AttnForward, AttnGrads, AttnInputs, AttnOp, AttnProblem, AttnSpec};
use gla_cpu::AttnTiled;

fn run(p: &AttnProblem, x: &AttnInputs<'_, f32>, d_o: &[f32], threads: usize) -> (AttnForward<f32>, AttnGrads<f32>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let f = AttnTiled.forward(p, x).unwrap();
        let g = AttnTiled.backward(p, x, &f, d_o).unwrap();
        (f, g)
    })
}

#[test]
fn tiled_is_bitwise_deterministic_across_thread_counts() {
    let p =
        AttnProblem::new(AttnSpec { h_kv: 2, window: Some(100), cu_seqlens: Some(vec![0, 150, 150, 290]), ..AttnSpec::new(1, 290, 4, 32) })
            .unwrap();
    let mut seed = 1u32;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let (q, k, v, d_o) = (rand(p.q_len()), rand(p.k_len()), rand(p.v_len()), rand(p.o_len()));
    let x = AttnInputs { q: &q, k: &k, v: &v };
    assert_eq!(run(&p, &x, &d_o, 1), run(&p, &x, &d_o, 3));
}

#[test]
fn decode_refuses_a_sequence_given_twice() {
    let p = gla_core::AttnProblem::new(gla_core::AttnSpec::new(2, 4, 1, 2)).expect("valid");
    let mut cache = gla_cpu::attn::AttnCache::<f32>::new(&p).expect("causal");
    let (q, k, v) = (vec![0.1f32; 4], vec![0.2f32; 4], vec![0.3f32; 4]);
    let e = cache.step(&[1, 1], &q, &k, &v).expect_err("a sequence twice in one step");
    assert!(matches!(e, gla_core::Error::BadArg { key: "active", .. }), "{e}");
    assert_eq!(cache.seen(1), Some(0), "nothing appended on a refused step");
    assert_eq!(cache.seen(2), None);
    cache.step(&[1], &q[..2], &k[..2], &v[..2]).expect("one token");
    assert_eq!(cache.seen(1), Some(1));
}
