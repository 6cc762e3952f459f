//! Every kind of bad input gets its typed error, from every CPU path, and nothing panics.

use gla_core::op::GlaOp;
use gla_core::{Backward, Error, GateKind, Inputs, Problem, ProblemSpec};
use gla_cpu::{decode_step, Chunked, FusedRecurrent, Naive, Schedule};

fn spec() -> ProblemSpec {
    ProblemSpec { b: 2, t: 5, h: 2, k: 3, v: 4, gate: GateKind::PerKey, scale: None, cu_seqlens: None }
}

fn with(f: impl FnOnce(&mut ProblemSpec)) -> Result<Problem, Error> {
    let mut s = spec();
    f(&mut s);
    Problem::new(s)
}

#[test]
fn zero_dims_are_rejected() {
    for dim in ["B", "H", "K", "V"] {
        let err = with(|s| match dim {
            "B" => s.b = 0,
            "H" => s.h = 0,
            "K" => s.k = 0,
            _ => s.v = 0,
        })
        .unwrap_err();
        assert_eq!(err, Error::ZeroDim { op: "gla", dim });
    }
    // T = 0 is legal: nothing to compute
    assert!(with(|s| s.t = 0).is_ok());
}

#[test]
fn bad_cu_seqlens_are_rejected() {
    let bad: [(usize, Vec<usize>, &str); 5] = [
        (1, vec![1, 5], "start at 0"),
        (1, vec![0, 4, 3, 5], "non-decreasing"),
        (1, vec![0, 4], "end at the packed length"),
        (2, vec![0, 5], "B == 1"),
        (1, vec![], "empty"),
    ];
    for (b, cu, needle) in bad {
        let err = with(|s| {
            s.b = b;
            s.cu_seqlens = Some(cu.clone());
        })
        .unwrap_err();
        match &err {
            Error::CuSeqlens { reason } => assert!(reason.contains(needle), "{reason}"),
            e => panic!("expected CuSeqlens for {cu:?}, got {e:?}"),
        }
        assert!(err.to_string().contains("cu_seqlens"));
    }
    assert!(with(|s| {
        s.b = 1;
        s.cu_seqlens = Some(vec![0, 0, 5, 5]);
    })
    .is_ok());
}

#[test]
fn non_finite_scale_is_rejected() {
    assert_eq!(with(|s| s.scale = Some(f64::NAN)).unwrap_err().to_string(), "scale must be finite, got NaN");
}

#[test]
fn shape_value_and_state_errors_from_every_path() {
    let p = Problem::new(spec()).unwrap();
    let par = Chunked { schedule: Schedule::PerChunk };
    let ops: [&dyn GlaOp<f32>; 4] = [&Naive, &FusedRecurrent, &Chunked::default(), &par];
    let q = vec![0.5f32; p.qk_len()];
    let v = vec![0.5f32; p.v_len()];
    let g = vec![-0.5f32; p.g_len()];
    let h0 = vec![0.0f32; p.state_len()];
    let d_o = vec![1.0f32; p.v_len()];
    let ok = Inputs { q: &q, k: &q, v: &v, g: Some(&g), h0: Some(&h0) };
    let short = vec![0.5f32; p.qk_len() - 1];
    let mut nan_q = q.clone();
    nan_q[7] = f32::NAN;
    let mut pos_g = g.clone();
    pos_g[3] = 0.25;
    let mut nan_g = g.clone();
    nan_g[4] = f32::NAN;
    let bad_h0 = vec![0.0f32; p.state_len() + 2];
    for op in ops {
        assert!(op.forward(&p, &ok, true).is_ok());
        let e = op.forward(&p, &Inputs { k: &short, ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { tensor: "k", .. }), "{e:?}");
        assert!(e.to_string().contains("[B=2, T=5, H=2, K=3]"), "{e}");
        let e = op.forward(&p, &Inputs { g: None, ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { tensor: "g", .. }), "{e:?}");
        let e = op.forward(&p, &Inputs { h0: Some(&bad_h0), ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { tensor: "h0", .. }), "{e:?}");
        let e = op.forward(&p, &Inputs { q: &nan_q, ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::NonFinite { tensor: "q", index: 7, .. }), "{e:?}");
        let e = op.forward(&p, &Inputs { g: Some(&pos_g), ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::BadGate { index: 3, .. }), "{e:?}");
        let e = op.forward(&p, &Inputs { g: Some(&nan_g), ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::BadGate { index: 4, .. }), "{e:?}");
        let e = op.backward(&p, &ok, &Backward { d_o: &d_o[1..], dht: None }).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { tensor: "do", .. }), "{e:?}");
        let e = op.backward(&p, &ok, &Backward { d_o: &d_o, dht: Some(&bad_h0) }).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { tensor: "dht", .. }), "{e:?}");
    }
}

#[test]
fn decode_step_rejects_a_wrong_state_and_leaves_it_unchanged() {
    let (n, h, k, v) = (2, 2, 3, 4);
    let mut state = vec![0.25f32; n * h * k * v + 1];
    let before = state.clone();
    let q = vec![0.5f32; n * h * k];
    let vv = vec![0.5f32; n * h * v];
    let g = vec![-0.1f32; n * h * k];
    let e = decode_step(&mut state, &q, &q, &vv, Some(&g), GateKind::PerKey, (n, h, k, v), None).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { tensor: "state", .. }), "{e:?}");
    assert_eq!(state, before);
    let mut state = vec![0.25f32; n * h * k * v];
    let before = state.clone();
    let mut bad_g = g.clone();
    bad_g[0] = 1.0;
    assert!(decode_step(&mut state, &q, &q, &vv, Some(&bad_g), GateKind::PerKey, (n, h, k, v), None).is_err());
    assert_eq!(state, before);
}
