//! The CPU matrix products (`rtune_trainer::matmul`) on every instruction set this CPU has,
//! against a float64 reference: edge tiles, strided and transposed operands, blocks deeper than
//! one k block and wider than one B block, accumulation, scale and bias, f32 and bf16 inputs,
//! one thread and several. And `RTUNE_TRAINER_ISA`'s parsing.

use rtune_trainer::isa::{self, Isa, IsaError};
use rtune_trainer::matmul::{Gemm, InputPrecision, Operand, gemm};

fn values(count: usize, seed: u32) -> Vec<f32> {
    (0..count)
        .map(|i| {
            let x = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 10007) as f32;
            x / 10007.0 * 4.0 - 2.0
        })
        .collect()
}

fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// A matrix stored row-major (`transposed == false`) or column-major, with padding between
/// rows/columns so that strides are not the logical width.
struct Stored {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    transposed: bool,
    lead: usize,
}

impl Stored {
    fn new(rows: usize, cols: usize, transposed: bool, seed: u32) -> Self {
        let lead = if transposed { rows + 3 } else { cols + 2 };
        let outer = if transposed { cols } else { rows };
        Self {
            data: values(outer * lead, seed),
            rows,
            cols,
            transposed,
            lead,
        }
    }

    fn get(&self, r: usize, c: usize) -> f32 {
        if self.transposed {
            self.data[c * self.lead + r]
        } else {
            self.data[r * self.lead + c]
        }
    }

    fn operand(&self) -> Operand {
        let op = Operand::rows(self.data.as_ptr(), self.lead);
        if self.transposed { op.t() } else { op }
    }
}

/// How the product is written: `C = alpha AB (+ C) (+ bias)`.
#[derive(Debug, Clone, Copy)]
struct Output {
    alpha: f32,
    accumulate: bool,
    bias: bool,
}

/// `C = AB`.
const PLAIN: Output = Output {
    alpha: 1.0,
    accumulate: false,
    bias: false,
};

fn check(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
    precision: InputPrecision,
    output: Output,
    parallel: bool,
) {
    let Output {
        alpha,
        accumulate,
        bias: with_bias,
    } = output;
    let a = Stored::new(m, k, a_t, 1);
    let b = Stored::new(k, n, b_t, 2);
    assert_eq!((a.rows, a.cols, b.rows, b.cols), (m, k, k, n));
    let bias = values(n, 3);
    let dst_stride = n + 5;
    let before = values(m * dst_stride, 4);
    let mut dst = before.clone();
    let spec = Gemm {
        alpha,
        accumulate,
        bias: with_bias.then_some(&bias[..]),
        precision,
        parallel,
        ..Gemm::new(m, n, k)
    };
    // SAFETY: the operands and the destination are valid for the shapes and do not overlap;
    // isa is at most the detected level.
    unsafe {
        gemm(
            isa,
            &spec,
            dst.as_mut_ptr(),
            dst_stride,
            a.operand(),
            b.operand(),
        )
    };
    let input = |x: f32| match precision {
        InputPrecision::F32 => x,
        InputPrecision::Bf16 => round_bf16(x),
    };
    let what =
        format!("{isa} {m}x{n}x{k} a_t={a_t} b_t={b_t} {precision:?} {output:?} par={parallel}");
    for r in 0..m {
        for c in 0..dst_stride {
            let got = dst[r * dst_stride + c];
            if c >= n {
                assert_eq!(
                    got,
                    before[r * dst_stride + c],
                    "{what}: padding ({r}, {c}) written"
                );
                continue;
            }
            let (mut sum, mut magnitude) = (0f64, 0f64);
            for p in 0..k {
                let product = f64::from(input(a.get(r, p))) * f64::from(input(b.get(p, c)));
                sum += product;
                magnitude += product.abs();
            }
            let mut expected = f64::from(alpha) * sum;
            if accumulate {
                expected += f64::from(before[r * dst_stride + c]);
            }
            if with_bias {
                expected += f64::from(bias[c]);
            }
            let tolerance = 1e-5 * (magnitude + 1.0);
            assert!(
                (f64::from(got) - expected).abs() <= tolerance,
                "{what}: ({r}, {c}) = {got}, expected {expected}"
            );
        }
    }
}

#[test]
fn every_instruction_set_matches_a_float64_reference() {
    let levels: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&level| level <= isa::detected())
        .collect();
    eprintln!("levels tested: {levels:?}");
    // Shapes: a single value, partial tiles in every direction, exact tiles, several k blocks
    // (k past 256 and 512) with an odd k, more than one B block (n past 1024), an empty k, and
    // one big enough for B to be packed, by all threads (130 rows, C blocks of 130 x 1024).
    let shapes = [
        (1, 1, 1),
        (5, 7, 3),
        (8, 32, 16),
        (33, 65, 300),
        (70, 40, 517),
        (9, 1030, 20),
        (4, 6, 0),
        (130, 1030, 40),
    ];
    let scaled = Output {
        alpha: 0.75,
        accumulate: true,
        bias: true,
    };
    let accumulated = Output {
        accumulate: true,
        ..PLAIN
    };
    let biased = Output {
        bias: true,
        ..PLAIN
    };
    for &level in &levels {
        for &shape in &shapes {
            for layout in [(false, false), (true, false), (false, true), (true, true)] {
                for precision in [InputPrecision::F32, InputPrecision::Bf16] {
                    check(level, shape, layout, precision, PLAIN, false);
                    check(level, shape, layout, precision, accumulated, false);
                }
            }
            check(
                level,
                shape,
                (false, false),
                InputPrecision::F32,
                scaled,
                true,
            );
            check(
                level,
                shape,
                (true, true),
                InputPrecision::Bf16,
                scaled,
                true,
            );
            check(
                level,
                shape,
                (false, true),
                InputPrecision::F32,
                biased,
                true,
            );
            check(
                level,
                shape,
                (true, false),
                InputPrecision::Bf16,
                biased,
                true,
            );
        }
    }
}

#[test]
fn bf16_inputs_are_rounded() {
    // 1 + 2^-10 is not a bf16 value (8 significant bits): rounded it is 1, so the bf16 product
    // of [1 + 2^-10] and [1] is 1 exactly, while the f32 product keeps the 2^-10.
    let a = [1.0f32 + 1.0 / 1024.0];
    let b = [1.0f32];
    for level in Isa::ALL.into_iter().filter(|&l| l <= isa::detected()) {
        for (precision, expected) in [
            (InputPrecision::F32, 1.0 + 1.0 / 1024.0),
            (InputPrecision::Bf16, 1.0),
        ] {
            let mut c = [0f32];
            let spec = Gemm {
                precision,
                ..Gemm::new(1, 1, 1)
            };
            // SAFETY: 1 x 1 operands and destination.
            unsafe {
                gemm(
                    level,
                    &spec,
                    c.as_mut_ptr(),
                    1,
                    Operand::rows(a.as_ptr(), 1),
                    Operand::rows(b.as_ptr(), 1),
                )
            };
            assert_eq!(c[0], expected, "{level} {precision:?}");
        }
    }
}

#[test]
fn the_environment_variable_caps_the_instruction_set() {
    assert_eq!(isa::resolve("", Isa::Amx), Ok(Isa::Amx));
    assert_eq!(isa::resolve("auto", Isa::Avx2), Ok(Isa::Avx2));
    assert_eq!(isa::resolve("avx2", Isa::Amx), Ok(Isa::Avx2));
    assert_eq!(isa::resolve("avx512-bf16", Isa::Amx), Ok(Isa::Avx512Bf16));
    assert_eq!(isa::resolve("generic", Isa::Avx2), Ok(Isa::Generic));
    assert_eq!(
        isa::resolve("amx", Isa::Avx2),
        Err(IsaError::Unsupported {
            requested: Isa::Amx,
            detected: Isa::Avx2
        })
    );
    let unknown = isa::resolve("avx3", Isa::Amx).expect_err("not a level");
    assert_eq!(unknown, IsaError::Unknown("avx3".into()));
    assert!(
        unknown.to_string().contains("RTUNE_TRAINER_ISA"),
        "{unknown}"
    );
    for level in Isa::ALL {
        assert_eq!(Isa::parse(level.name()), Some(level));
    }
}
