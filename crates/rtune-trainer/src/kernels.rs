//! Fused CPU kernels for the hot operations of a training step on burn's `flex` backend.
//!
//! burn composes layer norm, attention, GELU and cross entropy from many element-wise tensor ops,
//! each a pass over memory and a node in the autodiff graph whose backward pass runs several
//! more. Here each of them, and the linear layers, is one forward pass over raw `f32` slices and
//! one hand-written backward pass, registered as a single autodiff node (burn's
//! backend-extension path: [`Tensor::try_into_primitive`] to the `Autodiff<Flex>` primitive, a
//! [`Backward`] impl, [`Tensor::from_primitive`] back). The matrix products go through
//! [`crate::matmul`] (f32, or bf16 inputs with f32 accumulation); the element-wise loops are
//! compiled for AVX-512, AVX2+FMA and the baseline target, and run the variant
//! [`crate::isa::selected`] picks.
//!
//! Every entry point returns `None` when the tensor is not an `f32` tensor on the flex backend
//! (a CUDA device, another dtype, a gradient-checkpointing autodiff device); the caller then
//! falls back to the composed burn ops, so other backends keep working unchanged.

use crate::matmul::{Gemm, InputPrecision, Operand};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;
use std::mem::MaybeUninit;

type Ad = Autodiff<Flex>;
type AdTensor = burn::backend::tensor::FloatTensor<Ad>;

/// The `Autodiff<Flex>` primitive of `t` if it is an f32 autodiff tensor on the flex backend.
fn autodiff_primitive<const D: usize>(t: &Tensor<D>) -> Option<AdTensor> {
    if t.dtype() != DType::F32 || !t.is_autodiff() {
        return None;
    }
    t.clone().try_into_primitive::<Ad>().ok()
}

/// The plain flex primitive of `t` if it is an f32 tensor on the flex backend without autodiff.
fn plain_primitive<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 || t.is_autodiff() {
        return None;
    }
    t.clone().try_into_primitive::<Flex>().ok()
}

/// True when `t` is an f32 tensor on the flex backend (with or without autodiff): the tensors
/// the kernels here take.
pub fn is_flex_f32<const D: usize>(t: &Tensor<D>) -> bool {
    plain_primitive(t).is_some() || autodiff_primitive(t).is_some()
}

/// The values of a flex f32 tensor of any layout, contiguous.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The f32 values of a tensor made by [`contiguous`] or [`new_tensor`].
fn values(t: &FlexTensor) -> &[f32] {
    match t.as_slice::<f32>() {
        Some(values) => values,
        None => unreachable!("kernel tensors are contiguous f32"),
    }
}

/// An output value not written yet.
type Uninit = MaybeUninit<f32>;

/// `len` values that `init` writes, every one of them (skips zero-filling a buffer that is
/// overwritten anyway).
///
/// # Safety
/// `init` must write all `len` values.
unsafe fn initialised_by(len: usize, init: impl FnOnce(&mut [Uninit])) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    init(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: init wrote all len values (caller).
    unsafe { values.set_len(len) };
    values
}

/// [`initialised_by`] for a writer that takes a pointer.
///
/// # Safety
/// `init` must write all `len` values.
unsafe fn written_by(len: usize, init: impl FnOnce(*mut f32)) -> Vec<f32> {
    // SAFETY: forwarded from the caller.
    unsafe { initialised_by(len, |out| init(out.as_mut_ptr().cast())) }
}

/// The values of a contiguous f32 tensor, to change in place, if no other tensor shares them.
fn values_mut(t: &mut FlexTensor) -> Option<&mut [f32]> {
    let (start, end) = t.layout().contiguous_offsets()?;
    t.try_storage_mut::<f32>()
        .map(|values| &mut values[start..end])
}

fn new_tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// A raw pointer that parallel tasks write through, each to its own disjoint part.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every use hands disjoint index ranges to different tasks.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Chunk length for parallel element-wise passes (big enough to amortise rayon's overhead).
const CHUNK: usize = 1 << 14;

// ---------------------------------------------------------------------------------------------
// exp, vectorisable

/// `exp(x)` for f32 with a relative error of about 2e-7 (Cephes' polynomial), written without
/// branches or library calls so that loops over it vectorise. Arguments below -86 give 0
/// rather than a subnormal (subnormals cost a microcode assist per operation on x86; masked
/// attention scores are all far below).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let tiny = x < -86.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-86.0, 88.0);
    // ROUND + n for the integer n nearest x / ln 2; its bits are ROUND's plus n.
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_6e-1;
    p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    // 2^n from the bits of ROUND + n (n + 127 is the biased exponent, in 1..=254 after the
    // clamp): integer arithmetic that vectorises, where a float-to-int `as` conversion (with
    // its saturation rules) made the compiler fall back to scalar code.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23);
    if tiny { 0.0 } else { p * scale }
}

/// Runs `body` compiled for AVX-512 or for AVX2+FMA when [`crate::isa::selected`] allows them
/// (the default x86-64 target only allows SSE2), otherwise as compiled for the default target.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                let isa = crate::isa::selected();
                if isa.has_avx512() {
                    // SAFETY: the selected level is one the CPU supports.
                    return unsafe { avx512($($arg),*) };
                }
                if isa >= crate::isa::Isa::Avx2 {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

/// Independent partial sums in the reductions below. One running sum forces one addition after
/// the other (the compiler may not reorder floating-point additions); 16 lanes fill an AVX-512
/// register (two AVX2 ones), so the loops vectorise.
const LANES: usize = 16;

/// `sum(f(x))` over `xs`, in [`LANES`] partial sums.
#[inline(always)]
fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += f(x);
        }
    }
    rest.iter().map(|&x| f(x)).sum::<f32>() + acc.iter().sum::<f32>()
}

/// `sum(f(a, b))` over `a` and `b` side by side, in [`LANES`] partial sums.
#[inline(always)]
fn sum_zip_by(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0f32; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum::<f32>();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += f(x, y);
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// The largest value of `xs` (NaN ignored; -inf for none), in [`LANES`] partial maxima.
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

// ---------------------------------------------------------------------------------------------
// GELU

multiversion! {
    /// BLOOM's tanh-approximation GELU `x * sigmoid(2 * 0.79788456 * x * (1 + 0.044715 x^2))`,
    /// writing the value and, if `derivative` is not empty, its derivative.
    fn gelu_chunk(x: &[f32], out: &mut [Uninit], derivative: &mut [Uninit]) {
        const B: f32 = 2.0 * 0.797_884_6;
        const A: f32 = B * 0.044_715;
        if derivative.is_empty() {
            for (o, &v) in out.iter_mut().zip(x) {
                let z = (A * v * v + B) * v;
                let s = 1.0 / (1.0 + exp_approx(-z));
                o.write(v * s);
            }
        } else {
            for ((o, d), &v) in out.iter_mut().zip(derivative.iter_mut()).zip(x) {
                let square = v * v;
                let z = (A * square + B) * v;
                let s = 1.0 / (1.0 + exp_approx(-z));
                o.write(v * s);
                d.write(s + v * s * (1.0 - s) * (3.0 * A * square + B));
            }
        }
    }
}

fn gelu_values(x: &[f32], with_derivative: bool) -> (Vec<f32>, Vec<f32>) {
    let mut derivative = Vec::new();
    // SAFETY: the chunks of `out` (and of `derivative`) cover it, and gelu_chunk writes every
    // value of its chunks.
    let out = unsafe {
        initialised_by(x.len(), |out| {
            if with_derivative {
                derivative = initialised_by(x.len(), |derivative| {
                    out.par_chunks_mut(CHUNK)
                        .zip(derivative.par_chunks_mut(CHUNK))
                        .zip(x.par_chunks(CHUNK))
                        .for_each(|((o, d), x)| gelu_chunk(x, o, d));
                });
            } else {
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|(o, x)| gelu_chunk(x, o, &mut []));
            }
        })
    };
    (out, derivative)
}

multiversion! {
    /// `values[i] *= factors[i]`.
    fn mul_in_place(values: &mut [f32], factors: &[f32]) {
        values.iter_mut().zip(factors).for_each(|(v, f)| *v *= f);
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The derivative at each input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let mut grad = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(parent) = parent {
            let multiply = |g: &mut [f32]| {
                g.par_chunks_mut(CHUNK)
                    .zip(values(&ops.state).par_chunks(CHUNK))
                    .for_each(|(g, d)| mul_in_place(g, d))
            };
            // The incoming gradient's buffer is reused when nothing else holds it.
            let grad = match values_mut(&mut grad) {
                Some(g) => {
                    multiply(g);
                    grad
                }
                None => {
                    let mut out = values(&grad).to_vec();
                    multiply(&mut out);
                    new_tensor(out, grad.layout().shape())
                }
            };
            grads.register::<Flex>(parent.id, grad);
        }
    }
}

/// BLOOM's GELU as one fused op (see [`crate::model::bloom_gelu`]), or `None` off the flex
/// backend.
pub fn gelu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    if let Some(plain) = plain_primitive(x) {
        let plain = contiguous(plain);
        let shape = plain.layout().shape().to_vec();
        let (out, _) = gelu_values(values(&plain), false);
        return Some(Tensor::from_primitive::<Flex>(new_tensor(out, &shape)));
    }
    let x = autodiff_primitive(x)?;
    let input = contiguous(x.primitive().clone());
    let shape = input.layout().shape().to_vec();
    let output = match GeluBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, derivative) = gelu_values(values(&input), true);
            prep.finish(new_tensor(derivative, &shape), new_tensor(out, &shape))
        }
        OpsKind::UnTracked(prep) => {
            let (out, _) = gelu_values(values(&input), false);
            prep.finish(new_tensor(out, &shape))
        }
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

// ---------------------------------------------------------------------------------------------
// Layer norm

multiversion! {
    /// Normalises each row of `x` (`width` values): writes `xhat`, the row's `1/std` and
    /// `xhat * weight + bias`.
    fn layer_norm_rows(
        x: &[f32],
        width: usize,
        weight: &[f32],
        bias: &[f32],
        epsilon: f32,
        xhat: &mut [Uninit],
        rstd: &mut [f32],
        out: &mut [Uninit],
    ) {
        let rows = x.chunks(width).zip(xhat.chunks_mut(width)).zip(out.chunks_mut(width));
        for (((xr, hr), or), r) in rows.zip(rstd.iter_mut()) {
            let mean = sum_by(xr, |v| v) / width as f32;
            let var = sum_by(xr, |v| (v - mean) * (v - mean)) / width as f32;
            *r = 1.0 / (var + epsilon).sqrt();
            let outputs = hr.iter_mut().zip(or.iter_mut());
            for (((h, o), &v), (&w, &b)) in outputs.zip(xr).zip(weight.iter().zip(bias)) {
                let normalised = (v - mean) * *r;
                h.write(normalised);
                o.write(normalised * w + b);
            }
        }
    }
}

multiversion! {
    /// Layer norm's backward pass over a block of rows: `dx` rows, and the block's partial sums
    /// of `g * xhat` and `g` (added into `dw`, `db`) for the weight and the bias.
    fn layer_norm_backward_rows(
        dx: &mut [Uninit],
        g: &[f32],
        xhat: &[f32],
        rstd: &[f32],
        weight: &[f32],
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let width = weight.len();
        for (gr, hr) in g.chunks(width).zip(xhat.chunks(width)) {
            for (((dw, db), &gv), &hv) in dw.iter_mut().zip(db.iter_mut()).zip(gr).zip(hr) {
                *dw += gv * hv;
                *db += gv;
            }
        }
        let mut gw = vec![0f32; width];
        for (row, ((out, gr), hr)) in dx
            .chunks_mut(width)
            .zip(g.chunks(width))
            .zip(xhat.chunks(width))
            .enumerate()
        {
            for ((p, &gv), &w) in gw.iter_mut().zip(gr).zip(weight) {
                *p = gv * w;
            }
            let mean_gw = sum_by(&gw, |v| v) / width as f32;
            let mean_gwh = sum_zip_by(&gw, hr, |a, b| a * b) / width as f32;
            let r = rstd[row];
            for ((o, &p), &hv) in out.iter_mut().zip(&gw).zip(hr) {
                o.write(r * (p - mean_gw - hv * mean_gwh));
            }
        }
    }
}

/// Rows per parallel task of the layer-norm kernels.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1)
}

fn layer_norm_forward(
    x: &[f32],
    width: usize,
    weight: &[f32],
    bias: &[f32],
    epsilon: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = x.len() / width;
    let mut rstd = vec![0f32; rows];
    let mut out = Vec::new();
    let per = rows_per_task(rows);
    // SAFETY: the chunks cover xhat and out, and layer_norm_rows writes every value of its
    // rows.
    let xhat = unsafe {
        initialised_by(x.len(), |xhat| {
            out = initialised_by(x.len(), |out| {
                xhat.par_chunks_mut(per * width)
                    .zip(rstd.par_chunks_mut(per))
                    .zip(out.par_chunks_mut(per * width))
                    .zip(x.par_chunks(per * width))
                    .for_each(|(((h, r), o), x)| {
                        layer_norm_rows(x, width, weight, bias, epsilon, h, r, o)
                    });
            });
        })
    };
    (xhat, rstd, out)
}

#[derive(Debug, Clone)]
struct LayerNormState {
    xhat: FlexTensor,
    rstd: FlexTensor,
    weight: FlexTensor,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let shape = grad.layout().shape().to_vec();
        let g = values(&grad);
        let xhat = values(&ops.state.xhat);
        let rstd = values(&ops.state.rstd);
        let weight = values(&ops.state.weight);
        let width = weight.len();
        let rows = g.len() / width;
        let per = rows_per_task(rows);
        // Per task: dx rows, and partial sums of g * xhat and g for the weight and bias.
        let mut partials: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
        // SAFETY: the chunks cover dx and layer_norm_backward_rows writes all of each.
        let dx = unsafe {
            initialised_by(g.len(), |dx| {
                partials = dx
                    .par_chunks_mut(per * width)
                    .zip(g.par_chunks(per * width))
                    .zip(xhat.par_chunks(per * width))
                    .zip(rstd.par_chunks(per))
                    .map(|(((dx, g), xhat), rstd)| {
                        let mut dw = vec![0f32; width];
                        let mut db = vec![0f32; width];
                        layer_norm_backward_rows(dx, g, xhat, rstd, weight, &mut dw, &mut db);
                        (dw, db)
                    })
                    .collect();
            })
        };
        let mut dw = vec![0f32; width];
        let mut db = vec![0f32; width];
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, new_tensor(dx, &shape));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, new_tensor(dw, &[width]));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, new_tensor(db, &[width]));
        }
    }
}

/// Layer norm over the last dimension (biased variance) as one fused op, or `None` off the
/// flex backend.
pub fn layer_norm<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    epsilon: f64,
) -> Option<Tensor<D>> {
    let epsilon = epsilon as f32;
    if let (Some(x), Some(w), Some(b)) = (
        plain_primitive(x),
        plain_primitive(weight),
        plain_primitive(bias),
    ) {
        let (x, w, b) = (contiguous(x), contiguous(w), contiguous(b));
        let shape = x.layout().shape().to_vec();
        let (_, _, out) = layer_norm_forward(
            values(&x),
            values(&w).len(),
            values(&w),
            values(&b),
            epsilon,
        );
        return Some(Tensor::from_primitive::<Flex>(new_tensor(out, &shape)));
    }
    let (x, w, b) = (
        autodiff_primitive(x)?,
        autodiff_primitive(weight)?,
        autodiff_primitive(bias)?,
    );
    let input = contiguous(x.primitive().clone());
    let w_values = contiguous(w.primitive().clone());
    let b_values = contiguous(b.primitive().clone());
    let shape = input.layout().shape().to_vec();
    let width = values(&w_values).len();
    let (xhat, rstd, out) = layer_norm_forward(
        values(&input),
        width,
        values(&w_values),
        values(&b_values),
        epsilon,
    );
    let rows = rstd.len();
    let output = match LayerNormBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([
            x.node(),
            w.node(),
            b.node(),
        ])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            LayerNormState {
                xhat: new_tensor(xhat, &shape),
                rstd: new_tensor(rstd, &[rows]),
                weight: w_values,
            },
            new_tensor(out, &shape),
        ),
        OpsKind::UnTracked(prep) => prep.finish(new_tensor(out, &shape)),
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

// ---------------------------------------------------------------------------------------------
// Attention

/// `dst = scale * lhs * rhs` (`m x k` times `k x n`), destination rows `dst_row_stride` apart,
/// on one thread (attention runs one task per batch element and head).
///
/// # Safety
/// As [`crate::matmul::gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    precision: InputPrecision,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: Operand,
    rhs: Operand,
    scale: f32,
) {
    let spec = Gemm {
        alpha: scale,
        precision,
        ..Gemm::new(m, n, k)
    };
    // SAFETY: forwarded from the caller; the selected level is one the CPU supports.
    unsafe { crate::matmul::gemm(crate::isa::selected(), &spec, dst, dst_row_stride, lhs, rhs) }
}

/// Shapes of one attention call: `qkv` is `[batch, seq, heads, 3, head_dim]`, the bias
/// `[batch, heads, seq, seq]`, the context `[batch, seq, heads * head_dim]`.
#[derive(Debug, Clone, Copy)]
struct AttentionShape {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
    /// Offset in `qkv` of head `h`'s queries in batch element `b` (keys and values follow,
    /// `head_dim` apart); rows are `3 * hidden` apart.
    fn qkv_base(&self, b: usize, h: usize) -> usize {
        b * self.seq * 3 * self.hidden() + h * 3 * self.head_dim
    }
}

/// Row-wise `softmax(row + bias)` in place.
fn softmax_rows(scores: &mut [f32], bias: &[f32], seq: usize) {
    softmax_rows_impl(scores, bias, seq)
}

multiversion! {
    fn softmax_rows_impl(scores: &mut [f32], bias: &[f32], seq: usize) {
        for (row, bias) in scores.chunks_mut(seq).zip(bias.chunks(seq)) {
            for (s, &b) in row.iter_mut().zip(bias) {
                *s += b;
            }
            let max = max_of(row);
            for s in row.iter_mut() {
                *s = exp_approx(*s - max);
            }
            let inv = 1.0 / sum_by(row, |x| x);
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
    }
}

multiversion! {
    /// Softmax's backward pass per row: `dS = P * (dP - rowsum(dP * P))`, in place in `d_s`.
    fn softmax_backward_rows(d_s: &mut [f32], p: &[f32], seq: usize) {
        for (ds, pr) in d_s.chunks_mut(seq).zip(p.chunks(seq)) {
            let dot = sum_zip_by(ds, pr, |a, b| a * b);
            for (x, &pv) in ds.iter_mut().zip(pr) {
                *x = pv * (*x - dot);
            }
        }
    }
}

/// Forward pass: the context `[batch, seq, hidden]` and the probabilities
/// `[batch, heads, seq, seq]`.
fn attention_forward(
    qkv: &[f32],
    bias: &[f32],
    shape: AttentionShape,
    precision: InputPrecision,
) -> (Vec<f32>, Vec<f32>) {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim,
    } = shape;
    let hidden = shape.hidden();
    let row = 3 * hidden;
    // Every task writes its head's probabilities and its head's columns of the context, so
    // together they write both completely (set_len below).
    let mut context = Vec::with_capacity(batch * seq * hidden);
    let mut probs = Vec::with_capacity(batch * heads * seq * seq);
    let context_ptr = SharedMut(context.as_mut_ptr());
    let probs_ptr = SharedMut(probs.as_mut_ptr());
    (0..batch * heads)
        .into_par_iter()
        .zip(bias.par_chunks(seq * seq))
        .for_each(|(task, bias)| {
            let (b, h) = (task / heads, task % heads);
            // SAFETY: task's seq x seq block of probs, written only by this task.
            let p_ptr = unsafe { probs_ptr.get().add(task * seq * seq) };
            let base = shape.qkv_base(b, h);
            let q = Operand::rows(qkv[base..].as_ptr(), row);
            let k = Operand::rows(qkv[base + head_dim..].as_ptr(), row);
            let v = Operand::rows(qkv[base + 2 * head_dim..].as_ptr(), row);
            // SAFETY: q, k, v address `seq` rows of `head_dim` values `row` apart inside qkv;
            // the product writes all of p's block, after which it is a valid slice.
            let p = unsafe {
                matmul(
                    precision,
                    (seq, seq, head_dim),
                    p_ptr,
                    seq,
                    q,
                    k.t(),
                    shape.scale(),
                );
                std::slice::from_raw_parts_mut(p_ptr, seq * seq)
            };
            softmax_rows(p, bias, seq);
            // SAFETY: this task's head occupies columns h*head_dim.. of every row of its
            // batch element in the context; no other task writes them.
            unsafe {
                matmul(
                    precision,
                    (seq, head_dim, seq),
                    context_ptr.get().add(b * seq * hidden + h * head_dim),
                    hidden,
                    Operand::rows(p.as_ptr(), seq),
                    v,
                    1.0,
                )
            };
        });
    // SAFETY: the tasks wrote every value of both (above).
    unsafe {
        context.set_len(batch * seq * hidden);
        probs.set_len(batch * heads * seq * seq);
    }
    (context, probs)
}

#[derive(Debug, Clone)]
struct AttentionState {
    qkv: FlexTensor,
    probs: FlexTensor,
    shape: AttentionShape,
    precision: InputPrecision,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let AttentionState {
            ref qkv,
            ref probs,
            shape,
            precision,
        } = ops.state;
        let AttentionShape {
            batch,
            seq,
            heads,
            head_dim,
        } = shape;
        let hidden = shape.hidden();
        let row = 3 * hidden;
        let qkv = values(qkv);
        let probs = values(probs);
        let d_out = values(&grad);
        // Each task writes its head's q, k and v columns of every row of its batch element, so
        // together they write all of d_qkv (set_len below).
        let mut d_qkv = Vec::with_capacity(qkv.len());
        let d_ptr = SharedMut(d_qkv.as_mut_ptr());
        probs
            .par_chunks(seq * seq)
            .enumerate()
            .for_each(|(task, p)| {
                let (b, h) = (task / heads, task % heads);
                let base = shape.qkv_base(b, h);
                let q = Operand::rows(qkv[base..].as_ptr(), row);
                let k = Operand::rows(qkv[base + head_dim..].as_ptr(), row);
                let v = Operand::rows(qkv[base + 2 * head_dim..].as_ptr(), row);
                let d_o = Operand::rows(d_out[b * seq * hidden + h * head_dim..].as_ptr(), hidden);
                let p_op = Operand::rows(p.as_ptr(), seq);
                // SAFETY: as in the forward pass; this task writes only its head's q, k and v
                // columns of d_qkv.
                unsafe {
                    let d_base = d_ptr.get().add(base);
                    // dV = P^T dO
                    matmul(
                        precision,
                        (seq, head_dim, seq),
                        d_base.add(2 * head_dim),
                        row,
                        p_op.t(),
                        d_o,
                        1.0,
                    );
                    // dP = dO V^T (writes all of d_s)
                    let mut d_s = written_by(seq * seq, |d_s| {
                        matmul(precision, (seq, seq, head_dim), d_s, seq, d_o, v.t(), 1.0)
                    });
                    softmax_backward_rows(&mut d_s, p, seq);
                    let d_s_op = Operand::rows(d_s.as_ptr(), seq);
                    // dQ = scale dS K
                    matmul(
                        precision,
                        (seq, head_dim, seq),
                        d_base,
                        row,
                        d_s_op,
                        k,
                        shape.scale(),
                    );
                    // dK = scale dS^T Q
                    matmul(
                        precision,
                        (seq, head_dim, seq),
                        d_base.add(head_dim),
                        row,
                        d_s_op.t(),
                        q,
                        shape.scale(),
                    );
                }
            });
        // SAFETY: the tasks wrote every value (above).
        unsafe { d_qkv.set_len(qkv.len()) };
        grads.register::<Flex>(parent.id, new_tensor(d_qkv, &[batch, seq, 3 * hidden]));
    }
}

/// BLOOM self-attention from the fused projection `qkv` (`[batch, seq, 3 * hidden]`, viewed as
/// `(heads, 3, head_dim)` per position) and the additive `bias` (`[batch, heads, seq, seq]`,
/// no gradient): `softmax(q k^T / sqrt(head_dim) + bias) v` with heads merged back, as one
/// fused op, its matrix products in `precision`. `None` off the flex backend.
pub fn attention(
    qkv: &Tensor<3>,
    bias: &Tensor<4>,
    heads: usize,
    precision: InputPrecision,
) -> Option<Tensor<3>> {
    let [batch, seq, width] = qkv.dims();
    let bias_values = if bias.is_autodiff() {
        autodiff_primitive(bias)?.into_primitive()
    } else {
        plain_primitive(bias)?
    };
    let bias_values = contiguous(bias_values);
    if width % (3 * heads) != 0 || values(&bias_values).len() != batch * heads * seq * seq {
        return None;
    }
    let shape = AttentionShape {
        batch,
        seq,
        heads,
        head_dim: width / (3 * heads),
    };
    let out_shape = [batch, seq, shape.hidden()];
    if let Some(plain) = plain_primitive(qkv) {
        let plain = contiguous(plain);
        let (context, _) =
            attention_forward(values(&plain), values(&bias_values), shape, precision);
        return Some(Tensor::from_primitive::<Flex>(new_tensor(
            context, &out_shape,
        )));
    }
    let qkv = autodiff_primitive(qkv)?;
    let input = contiguous(qkv.primitive().clone());
    let (context, probs) =
        attention_forward(values(&input), values(&bias_values), shape, precision);
    let output = match AttentionBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([qkv.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            AttentionState {
                qkv: input,
                probs: new_tensor(probs, &[batch, heads, seq, seq]),
                shape,
                precision,
            },
            new_tensor(context, &out_shape),
        ),
        OpsKind::UnTracked(prep) => prep.finish(new_tensor(context, &out_shape)),
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

// ---------------------------------------------------------------------------------------------
// Linear layers

/// How a linear layer's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`: `y = x W` (burn's `linear`; the model's dense layers).
    InOut,
    /// `[out, in]`: `y = x W^T` (PyTorch's; the word embeddings as the tied lm_head).
    OutIn,
}

#[derive(Debug, Clone, Copy)]
struct LinearShape {
    rows: usize,
    inputs: usize,
    outputs: usize,
    layout: WeightLayout,
    precision: InputPrecision,
}

impl LinearShape {
    /// The weight as the `inputs x outputs` right-hand operand.
    fn weight(&self, w: &[f32]) -> Operand {
        match self.layout {
            WeightLayout::InOut => Operand::rows(w.as_ptr(), self.outputs),
            WeightLayout::OutIn => Operand::rows(w.as_ptr(), self.inputs).t(),
        }
    }

    /// A new `m x n` matrix `lhs rhs (+ bias)`, computed over rayon's threads.
    ///
    /// # Safety
    /// As [`crate::matmul::gemm`].
    unsafe fn product(
        &self,
        (m, n, k): (usize, usize, usize),
        lhs: Operand,
        rhs: Operand,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let spec = Gemm {
            bias,
            precision: self.precision,
            parallel: true,
            ..Gemm::new(m, n, k)
        };
        let isa = crate::isa::selected();
        // SAFETY: forwarded from the caller; gemm writes all m x n values of its destination;
        // the selected level is one the CPU supports.
        unsafe {
            written_by(m * n, |dst| {
                crate::matmul::gemm(isa, &spec, dst, n, lhs, rhs)
            })
        }
    }
}

fn linear_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, shape: LinearShape) -> Vec<f32> {
    let LinearShape {
        rows,
        inputs,
        outputs,
        ..
    } = shape;
    // SAFETY: x is rows x inputs, the weight inputs x outputs (checked by `linear`).
    unsafe {
        shape.product(
            (rows, outputs, inputs),
            Operand::rows(x.as_ptr(), inputs),
            shape.weight(w),
            bias,
        )
    }
}

multiversion! {
    /// `sums[j] += rows[r][j]` over the rows of `rows` (`sums.len()` columns).
    fn add_rows(sums: &mut [f32], rows: &[f32]) {
        for row in rows.chunks_exact(sums.len()) {
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
    }
}

/// Column sums of a row-major matrix with `width` columns.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let rows = values.len() / width;
    let per = rows_per_task(rows);
    values
        .par_chunks(per * width)
        .map(|chunk| {
            let mut sums = vec![0f32; width];
            add_rows(&mut sums, chunk);
            sums
        })
        .reduce(
            || vec![0f32; width],
            |mut a, b| {
                add_rows(&mut a, &b);
                a
            },
        )
}

#[derive(Debug, Clone)]
struct LinearState {
    input: FlexTensor,
    weight: FlexTensor,
    shape: LinearShape,
}

/// The gradients of a linear layer that are asked for: input, weight, bias.
fn linear_backward(
    state: &LinearState,
    d_out: &[f32],
    [want_input, want_weight, want_bias]: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let shape = state.shape;
    let LinearShape {
        rows,
        inputs,
        outputs,
        layout,
        ..
    } = shape;
    let x = Operand::rows(values(&state.input).as_ptr(), inputs);
    let w = values(&state.weight);
    let dy = Operand::rows(d_out.as_ptr(), outputs);
    // SAFETY (all three products): the operands are the saved rows x inputs input, the saved
    // weight and the rows x outputs output gradient.
    // dX = dY W^T
    let d_input = want_input
        .then(|| unsafe { shape.product((rows, inputs, outputs), dy, shape.weight(w).t(), None) });
    let d_weight = want_weight.then(|| match layout {
        // dW = X^T dY, [in, out]
        WeightLayout::InOut => unsafe { shape.product((inputs, outputs, rows), x.t(), dy, None) },
        // dW = dY^T X, [out, in]
        WeightLayout::OutIn => unsafe { shape.product((outputs, inputs, rows), dy.t(), x, None) },
    });
    let d_bias = want_bias.then(|| column_sums(d_out, outputs));
    [d_input, d_weight, d_bias]
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let want = [node_x.is_some(), node_w.is_some(), false];
        let [dx, dw, _] = linear_backward(&ops.state, values(&grad), want);
        let ids = [node_x.map(|n| n.id), node_w.map(|n| n.id), None];
        register_linear_grads(&ops.state, grads, ids, [dx, dw, None]);
    }
}

#[derive(Debug)]
struct LinearBiasBackward;

impl Backward<Flex, 3> for LinearBiasBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let want = [nodes[0].is_some(), nodes[1].is_some(), nodes[2].is_some()];
        let computed = linear_backward(&ops.state, values(&grad), want);
        register_linear_grads(&ops.state, grads, nodes.map(|n| n.map(|n| n.id)), computed);
    }
}

fn register_linear_grads(
    state: &LinearState,
    grads: &mut Gradients,
    ids: [Option<burn::backend::autodiff::NodeId>; 3],
    computed: [Option<Vec<f32>>; 3],
) {
    let input_shape = state.input.layout().shape().to_vec();
    let weight_shape = state.weight.layout().shape().to_vec();
    let shapes = [input_shape, weight_shape, vec![state.shape.outputs]];
    for ((id, values), shape) in ids.into_iter().zip(computed).zip(shapes) {
        if let (Some(id), Some(values)) = (id, values) {
            grads.register::<Flex>(id, new_tensor(values, &shape));
        }
    }
}

/// A linear layer `y = x W (+ b)` (weight `[in, out]`) or `y = x W^T (+ b)` (weight
/// `[out, in]`) over the last dimension of `x`, as one op whose matrix products run in
/// `precision` ([`crate::matmul`]; the weight stays f32, only the product's inputs are
/// rounded). `None` off the flex backend or for shapes that do not fit.
pub fn linear<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    layout: WeightLayout,
    precision: InputPrecision,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let inputs = dims[D - 1];
    let [w0, w1] = weight.dims();
    let (w_in, outputs) = match layout {
        WeightLayout::InOut => (w0, w1),
        WeightLayout::OutIn => (w1, w0),
    };
    if w_in != inputs || bias.is_some_and(|b| b.dims() != [outputs]) {
        return None;
    }
    let mut out_dims = dims.to_vec();
    out_dims[D - 1] = outputs;
    let shape = LinearShape {
        rows: dims[..D - 1].iter().product(),
        inputs,
        outputs,
        layout,
        precision,
    };
    if let (Some(x), Some(w)) = (plain_primitive(x), plain_primitive(weight)) {
        let b = match bias {
            Some(b) => Some(contiguous(plain_primitive(b)?)),
            None => None,
        };
        let (x, w) = (contiguous(x), contiguous(w));
        let y = linear_forward(values(&x), values(&w), b.as_ref().map(values), shape);
        return Some(Tensor::from_primitive::<Flex>(new_tensor(y, &out_dims)));
    }
    let (x, w) = (autodiff_primitive(x)?, autodiff_primitive(weight)?);
    let b = match bias {
        Some(b) => Some(autodiff_primitive(b)?),
        None => None,
    };
    let input = contiguous(x.primitive().clone());
    let w_values = contiguous(w.primitive().clone());
    let b_values = b.as_ref().map(|b| contiguous(b.primitive().clone()));
    let y = linear_forward(
        values(&input),
        values(&w_values),
        b_values.as_ref().map(values),
        shape,
    );
    let y = new_tensor(y, &out_dims);
    let state = LinearState {
        input,
        weight: w_values,
        shape,
    };
    type Strategy = burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    let output = match b {
        Some(b) => match LinearBiasBackward
            .prepare::<Strategy>([x.node(), w.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match LinearBackward
            .prepare::<Strategy>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

// ---------------------------------------------------------------------------------------------
// Cross entropy

multiversion! {
    /// Softmax of each row of `logits` in place; returns the summed `-log p[target]` of the
    /// rows.
    fn softmax_nll_rows(logits: &mut [f32], targets: &[i64], width: usize) -> f64 {
        let mut total = 0f64;
        for (row, &target) in logits.chunks_mut(width).zip(targets) {
            let max = max_of(row);
            let picked = row[target as usize];
            for v in row.iter_mut() {
                *v = exp_approx(*v - max);
            }
            let sum = sum_by(row, |x| x);
            total += f64::from(sum.ln() + max - picked);
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
        total
    }
}

multiversion! {
    /// Cross entropy's gradient per row, in place over the probabilities: `(p - onehot) * scale`.
    fn cross_entropy_grad_rows(d: &mut [f32], targets: &[i64], width: usize, scale: f32) {
        for (row, &t) in d.chunks_mut(width).zip(targets) {
            row[t as usize] -= 1.0;
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

#[derive(Debug, Clone)]
struct CrossEntropyState {
    probs: FlexTensor,
    targets: std::sync::Arc<Vec<i64>>,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let g = values(&grad).first().copied().unwrap_or(0.0);
        let CrossEntropyState { mut probs, targets } = ops.state;
        let width = probs.layout().shape()[1];
        let scale = g / targets.len() as f32;
        let per = rows_per_task(targets.len());
        let gradient = |d: &mut [f32]| {
            d.par_chunks_mut(per * width)
                .zip(targets.par_chunks(per))
                .for_each(|(d, targets)| cross_entropy_grad_rows(d, targets, width, scale))
        };
        // The saved probabilities become the gradient in place (this node is their only user).
        let d = match values_mut(&mut probs) {
            Some(d) => {
                gradient(d);
                probs
            }
            None => {
                let mut d = values(&probs).to_vec();
                gradient(&mut d);
                new_tensor(d, probs.layout().shape())
            }
        };
        grads.register::<Flex>(parent.id, d);
    }
}

/// Mean of `-log_softmax(logits)[row, targets[row]]` over the rows of `logits` (`[rows,
/// vocab]`), shape `[1]`, as one fused op. `None` off the flex backend or for a target out of
/// range.
pub fn cross_entropy(logits: &Tensor<2>, targets: &[i64]) -> Option<Tensor<1>> {
    let [rows, width] = logits.dims();
    if rows != targets.len() || rows == 0 || targets.iter().any(|&t| t < 0 || t as usize >= width) {
        return None;
    }
    let run = |input: FlexTensor| {
        let mut probs = values(&contiguous(input)).to_vec();
        let per = rows_per_task(rows);
        let total: f64 = probs
            .par_chunks_mut(per * width)
            .zip(targets.par_chunks(per))
            .map(|(p, t)| softmax_nll_rows(p, t, width))
            .sum();
        let loss = new_tensor(vec![(total / rows as f64) as f32], &[1]);
        (new_tensor(probs, &[rows, width]), loss)
    };
    if let Some(plain) = plain_primitive(logits) {
        return Some(Tensor::from_primitive::<Flex>(run(plain).1));
    }
    let x = autodiff_primitive(logits)?;
    let (probs, loss) = run(x.primitive().clone());
    let output = match CrossEntropyBackward
        .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            CrossEntropyState {
                probs,
                targets: std::sync::Arc::new(targets.to_vec()),
            },
            loss,
        ),
        OpsKind::UnTracked(prep) => prep.finish(loss),
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

// ---------------------------------------------------------------------------------------------
// AdamW

/// Scalars of one AdamW step (PyTorch's / burn's `AdamW`, no AMSGrad).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the denominator.
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// 1-based step count of this parameter (for the bias corrections).
    pub time: i32,
}

/// The per-step scalars of [`adamw_chunk`].
#[derive(Debug, Clone, Copy)]
struct AdamWScalars {
    b1: f32,
    b2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    /// `1 - lr * weight_decay` (exactly 1 without weight decay, which leaves p unchanged).
    keep: f32,
    lr: f32,
}

/// AdamW's update of one element: the new parameter and moments.
#[inline(always)]
fn adamw_element(p: f32, g: f32, m: f32, v: f32, c: AdamWScalars) -> (f32, f32, f32) {
    let m1 = m * c.b1 + g * (1.0 - c.b1);
    let m2 = v * c.b2 + g * g * (1.0 - c.b2);
    let delta = (m1 / c.correction_1) / ((m2 / c.correction_2).sqrt() + c.epsilon);
    (p * c.keep - delta * c.lr, m1, m2)
}

multiversion! {
    /// AdamW over one chunk; `moments` `None` on the first step (zero moments: `0 * b + x` is
    /// exactly `x`, so the values equal the first-step formulas).
    fn adamw_chunk(
        p: &[f32],
        g: &[f32],
        moments: Option<(&[f32], &[f32])>,
        outputs: (&mut [Uninit], &mut [Uninit], &mut [Uninit]),
        c: AdamWScalars,
    ) {
        let (np, nm, nv) = outputs;
        let outputs = np.iter_mut().zip(nm.iter_mut()).zip(nv.iter_mut());
        let write = |((np, nm), nv): ((&mut Uninit, &mut Uninit), &mut Uninit), values| {
            let (p, m, v) = values;
            np.write(p);
            nm.write(m);
            nv.write(v);
        };
        match moments {
            Some((m, v)) => {
                for ((out, (&p, &g)), (&m, &v)) in outputs.zip(p.iter().zip(g)).zip(m.iter().zip(v)) {
                    write(out, adamw_element(p, g, m, v, c));
                }
            }
            None => {
                for (out, (&p, &g)) in outputs.zip(p.iter().zip(g)) {
                    write(out, adamw_element(p, g, 0.0, 0.0, c));
                }
            }
        }
    }
}

/// One AdamW update of a parameter in a single pass over its values: returns the new
/// parameter and moments. The arithmetic is burn's `AdamW` step, element by element.
/// `None` off the flex backend (or for tensors with autodiff).
pub fn adamw_step<const D: usize>(
    param: &Tensor<D>,
    grad: &Tensor<D>,
    moments: Option<(&Tensor<D>, &Tensor<D>)>,
    step: AdamWStep,
) -> Option<(Tensor<D>, Tensor<D>, Tensor<D>)> {
    let p = contiguous(plain_primitive(param)?);
    let g = contiguous(plain_primitive(grad)?);
    let (m, v) = match moments {
        Some((m, v)) => (
            Some(contiguous(plain_primitive(m)?)),
            Some(contiguous(plain_primitive(v)?)),
        ),
        None => (None, None),
    };
    let shape = p.layout().shape().to_vec();
    let (pv, gv) = (values(&p), values(&g));
    if pv.len() != gv.len() {
        return None;
    }
    let (b1, b2) = (step.beta_1, step.beta_2);
    let correction_1 = 1.0 - b1.powi(step.time);
    let correction_2 = 1.0 - b2.powi(step.time);
    let decay_rate = step.lr * f64::from(step.weight_decay);
    let keep = (1.0 - decay_rate) as f32;
    let lr = step.lr as f32;
    let scalars = AdamWScalars {
        b1,
        b2,
        correction_1,
        correction_2,
        epsilon: step.epsilon,
        keep: if decay_rate == 0.0 { 1.0 } else { keep },
        lr,
    };
    let mv = m.as_ref().map(values);
    let vv = v.as_ref().map(values);
    if mv.is_some_and(|m| m.len() != pv.len()) || vv.is_some_and(|v| v.len() != pv.len()) {
        return None;
    }
    let len = pv.len();
    let (mut new_m, mut new_v) = (Vec::new(), Vec::new());
    // SAFETY: the chunks cover the three outputs and adamw_chunk writes every value of its
    // chunks.
    let new_p = unsafe {
        initialised_by(len, |new_p| {
            new_m = initialised_by(len, |new_m| {
                new_v = initialised_by(len, |new_v| {
                    new_p
                        .par_chunks_mut(CHUNK)
                        .zip(new_m.par_chunks_mut(CHUNK))
                        .zip(new_v.par_chunks_mut(CHUNK))
                        .enumerate()
                        .for_each(|(chunk, ((np, nm), nv))| {
                            let start = chunk * CHUNK;
                            let end = start + np.len();
                            let (p, g) = (&pv[start..end], &gv[start..end]);
                            let (m, v) = (mv.map(|m| &m[start..end]), vv.map(|v| &v[start..end]));
                            adamw_chunk(p, g, m.zip(v), (np, nm, nv), scalars);
                        });
                });
            });
        })
    };
    let wrap = |values: Vec<f32>| Tensor::from_primitive::<Flex>(new_tensor(values, &shape));
    Some((wrap(new_p), wrap(new_m), wrap(new_v)))
}
