//! GFLOP/s of `rtune_trainer::matmul::gemm` on the products of one training step of a BLOOM
//! model (every linear layer forward and backward, and attention's per-head products), to see
//! which product shapes and operand layouts the GEMM handles badly.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p rtune-trainer --example gemm_shapes -- 2048 512 256 64
//! ```
//!
//! Arguments: tokens per step (batch x seq), hidden size, seq, head_dim (defaults: the
//! `large-2t` benchmark case of `scripts/bench-trainer`). `RTUNE_TRAINER_ISA` and
//! `PRECISION=bf16` apply as in the trainer.

use rtune_trainer::matmul::{Gemm, InputPrecision, Operand, gemm};
use std::time::Instant;

/// One product: `C[m x n] = A B`, A stored transposed when `a_t`, B when `b_t`, with the row
/// stride of the stored matrices given (as the trainer's layouts have them).
struct Case {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    a_t: bool,
    b_t: bool,
    parallel: bool,
    /// Row stride of B as stored (the fused qkv rows in attention are wider than the head).
    b_lead: Option<usize>,
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (rows, h, seq, hd) = (arg(0, 2048), arg(1, 512), arg(2, 256), arg(3, 64));
    let precision = match std::env::var("PRECISION").as_deref() {
        Ok("bf16") => InputPrecision::Bf16,
        _ => InputPrecision::F32,
    };
    let linear = |name, m, n, k, a_t, b_t| Case {
        name,
        m,
        n,
        k,
        a_t,
        b_t,
        parallel: true,
        b_lead: None,
    };
    let cases = [
        linear("qkv fwd   x W", rows, 3 * h, h, false, false),
        linear("dense fwd x W", rows, h, h, false, false),
        linear("up fwd    x W", rows, 4 * h, h, false, false),
        linear("down fwd  x W", rows, h, 4 * h, false, false),
        linear("lm_head   x E^T", rows, h, h, false, true),
        linear("qkv dX    dY W^T", rows, h, 3 * h, false, true),
        linear("up dX     dY W^T", rows, h, 4 * h, false, true),
        linear("down dX   dY W^T", rows, 4 * h, h, false, true),
        linear("qkv dW    X^T dY", h, 3 * h, rows, true, false),
        linear("up dW     X^T dY", h, 4 * h, rows, true, false),
        linear("down dW   X^T dY", 4 * h, h, rows, true, false),
        linear("lm dW     dY^T X", h, h, rows, true, false),
        Case {
            name: "attn Q K^T (1 head)",
            m: seq,
            n: seq,
            k: hd,
            a_t: false,
            b_t: true,
            parallel: false,
            b_lead: Some(3 * h),
        },
        Case {
            name: "attn P V (1 head)",
            m: seq,
            n: hd,
            k: seq,
            a_t: false,
            b_t: false,
            parallel: false,
            b_lead: Some(3 * h),
        },
        Case {
            name: "attn P^T dO (1 head)",
            m: seq,
            n: hd,
            k: seq,
            a_t: true,
            b_t: false,
            parallel: false,
            b_lead: Some(h),
        },
        Case {
            name: "attn dS^T Q (1 head)",
            m: seq,
            n: hd,
            k: seq,
            a_t: true,
            b_t: false,
            parallel: false,
            b_lead: Some(3 * h),
        },
    ];
    let isa = rtune_trainer::isa::selected();
    println!(
        "isa={isa} threads={} precision={precision:?}",
        rayon::current_num_threads()
    );
    let mut total_flops = 0.0;
    let mut total_time = 0.0;
    for case in cases {
        let lead_b = case
            .b_lead
            .unwrap_or(if case.b_t { case.k } else { case.n });
        let a_len = case.m * case.k;
        let b_len = if case.b_t {
            case.n * lead_b
        } else {
            case.k * lead_b
        };
        let a: Vec<f32> = (0..a_len).map(|i| (i % 97) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..b_len).map(|i| (i % 89) as f32 * 0.01).collect();
        let mut c = vec![0f32; case.m * case.n];
        let a_op = if case.a_t {
            Operand::rows(a.as_ptr(), case.m).t()
        } else {
            Operand::rows(a.as_ptr(), case.k)
        };
        let b_op = if case.b_t {
            Operand::rows(b.as_ptr(), lead_b).t()
        } else {
            Operand::rows(b.as_ptr(), lead_b)
        };
        let spec = Gemm {
            precision,
            parallel: case.parallel,
            ..Gemm::new(case.m, case.n, case.k)
        };
        let flops = 2.0 * (case.m * case.n * case.k) as f64;
        let reps = (2e10 / flops).clamp(3.0, 2000.0) as usize;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = Instant::now();
            for _ in 0..reps {
                // SAFETY: a, b and c hold the m x k, k x n and m x n matrices described.
                unsafe { gemm(isa, &spec, c.as_mut_ptr(), case.n, a_op, b_op) };
            }
            best = best.min(start.elapsed().as_secs_f64() / reps as f64);
        }
        std::hint::black_box(&c);
        total_flops += flops;
        total_time += best;
        println!(
            "{:22} {:5} x {:5} x {:5}  {:8.1} us  {:6.1} GFLOP/s",
            case.name,
            case.m,
            case.n,
            case.k,
            best * 1e6,
            flops / best / 1e9
        );
    }
    println!(
        "all (one of each)      {:6.1} GFLOP/s",
        total_flops / total_time / 1e9
    );
}
