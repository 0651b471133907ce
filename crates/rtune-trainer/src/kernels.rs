//! Fused CPU kernels for the hot operations of a training step on burn's `flex` backend.
//!
//! burn composes layer norm, attention, GELU and cross entropy from many element-wise tensor ops,
//! each a pass over memory and a node in the autodiff graph whose backward pass runs several
//! more. Here each of them is one forward pass over raw `f32` slices and one hand-written
//! backward pass, registered as a single autodiff node (burn's backend-extension path:
//! [`Tensor::try_into_primitive`] to the `Autodiff<Flex>` primitive, a [`Backward`] impl,
//! [`Tensor::from_primitive`] back).
//!
//! Every entry point returns `None` when the tensor is not an `f32` tensor on the flex backend
//! (a CUDA device, another dtype, a gradient-checkpointing autodiff device); the caller then
//! falls back to the composed burn ops, so other backends keep working unchanged.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

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
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_6e-1;
    p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if tiny { 0.0 } else { p * scale }
}

/// Runs `body` compiled for AVX2+FMA when the CPU has them (the default x86-64 target only
/// allows SSE2), otherwise as compiled for the default target.
macro_rules! multiversion {
    (fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `fast` is compiled for.
                    unsafe { fast($($arg),*) };
                    return;
                }
            }
            inner($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// GELU

/// BLOOM's tanh-approximation GELU `x * sigmoid(2 * 0.79788456 * x * (1 + 0.044715 x^2))`,
/// writing the value and, if `derivative` is not empty, its derivative.
fn gelu_chunk(x: &[f32], out: &mut [f32], derivative: &mut [f32]) {
    gelu_chunk_impl(x, out, derivative)
}

multiversion! {
    fn gelu_chunk_impl(x: &[f32], out: &mut [f32], derivative: &mut [f32]) {
        const B: f32 = 2.0 * 0.797_884_6;
        const A: f32 = B * 0.044_715;
        if derivative.is_empty() {
            for (o, &v) in out.iter_mut().zip(x) {
                let z = (A * v * v + B) * v;
                let s = 1.0 / (1.0 + exp_approx(-z));
                *o = v * s;
            }
        } else {
            for ((o, d), &v) in out.iter_mut().zip(derivative.iter_mut()).zip(x) {
                let square = v * v;
                let z = (A * square + B) * v;
                let s = 1.0 / (1.0 + exp_approx(-z));
                *o = v * s;
                *d = s + v * s * (1.0 - s) * (3.0 * A * square + B);
            }
        }
    }
}

fn gelu_values(x: &[f32], with_derivative: bool) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; x.len()];
    let mut derivative = vec![0f32; if with_derivative { x.len() } else { 0 }];
    if with_derivative {
        out.par_chunks_mut(CHUNK)
            .zip(derivative.par_chunks_mut(CHUNK))
            .zip(x.par_chunks(CHUNK))
            .for_each(|((o, d), x)| gelu_chunk(x, o, d));
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| gelu_chunk(x, o, &mut []));
    }
    (out, derivative)
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The derivative at each input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(parent) = parent {
            let shape = grad.layout().shape().to_vec();
            let mut out = values(&grad).to_vec();
            out.par_chunks_mut(CHUNK)
                .zip(values(&ops.state).par_chunks(CHUNK))
                .for_each(|(g, d)| g.iter_mut().zip(d).for_each(|(g, d)| *g *= d));
            grads.register::<Flex>(parent.id, new_tensor(out, &shape));
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

/// Normalises each row of `x` (`width` values): writes `xhat` and the row's `1/std` and, if
/// `out` is not empty, `xhat * weight + bias`.
#[allow(clippy::too_many_arguments)]
fn layer_norm_rows(
    x: &[f32],
    width: usize,
    weight: &[f32],
    bias: &[f32],
    epsilon: f32,
    xhat: &mut [f32],
    rstd: &mut [f32],
    out: &mut [f32],
) {
    for (row, (xr, hr)) in x.chunks(width).zip(xhat.chunks_mut(width)).enumerate() {
        let mean = xr.iter().sum::<f32>() / width as f32;
        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let r = 1.0 / (var + epsilon).sqrt();
        rstd[row] = r;
        for (h, &v) in hr.iter_mut().zip(xr) {
            *h = (v - mean) * r;
        }
        if !out.is_empty() {
            let or = &mut out[row * width..(row + 1) * width];
            for (((o, &h), &w), &b) in or.iter_mut().zip(hr.iter()).zip(weight).zip(bias) {
                *o = h * w + b;
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
    let mut xhat = vec![0f32; x.len()];
    let mut rstd = vec![0f32; rows];
    let mut out = vec![0f32; x.len()];
    let per = rows_per_task(rows);
    xhat.par_chunks_mut(per * width)
        .zip(rstd.par_chunks_mut(per))
        .zip(out.par_chunks_mut(per * width))
        .zip(x.par_chunks(per * width))
        .for_each(|(((h, r), o), x)| layer_norm_rows(x, width, weight, bias, epsilon, h, r, o));
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
        let mut dx = vec![0f32; g.len()];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(per * width)
            .zip(g.par_chunks(per * width))
            .zip(xhat.par_chunks(per * width))
            .zip(rstd.par_chunks(per))
            .map(|(((dx, g), xhat), rstd)| {
                let mut dw = vec![0f32; width];
                let mut db = vec![0f32; width];
                for (gr, hr) in g.chunks(width).zip(xhat.chunks(width)) {
                    for (((dw, db), &gv), &hv) in dw.iter_mut().zip(db.iter_mut()).zip(gr).zip(hr) {
                        *dw += gv * hv;
                        *db += gv;
                    }
                }
                for (row, ((out, gr), hr)) in dx
                    .chunks_mut(width)
                    .zip(g.chunks(width))
                    .zip(xhat.chunks(width))
                    .enumerate()
                {
                    let mut mean_gw = 0f32;
                    let mut mean_gwh = 0f32;
                    for ((&gv, &w), &hv) in gr.iter().zip(weight).zip(hr) {
                        mean_gw += gv * w;
                        mean_gwh += gv * w * hv;
                    }
                    mean_gw /= width as f32;
                    mean_gwh /= width as f32;
                    let r = rstd[row];
                    for (((o, &gv), &w), &hv) in out.iter_mut().zip(gr).zip(weight).zip(hr) {
                        *o = r * (gv * w - mean_gw - hv * mean_gwh);
                    }
                }
                (dw, db)
            })
            .collect();
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

/// `dst = beta * lhs * rhs` (`m x k` times `k x n`) for strided f32 matrices, one thread.
///
/// # Safety
/// The pointers and strides must address valid `m x k`, `k x n` and `m x n` matrices, the
/// destination not overlapping the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (isize, isize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (isize, isize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (isize, isize),
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
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
}

/// Row-wise `softmax(row + bias)` in place.
fn softmax_rows(scores: &mut [f32], bias: &[f32], seq: usize) {
    softmax_rows_impl(scores, bias, seq)
}

multiversion! {
    fn softmax_rows_impl(scores: &mut [f32], bias: &[f32], seq: usize) {
        for (row, bias) in scores.chunks_mut(seq).zip(bias.chunks(seq)) {
            let mut max = f32::NEG_INFINITY;
            for (s, &b) in row.iter_mut().zip(bias) {
                *s += b;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = exp_approx(*s - max);
                sum += *s;
            }
            let inv = 1.0 / sum;
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
    }
}

/// Forward pass: the context `[batch, seq, hidden]` and the probabilities
/// `[batch, heads, seq, seq]`.
fn attention_forward(qkv: &[f32], bias: &[f32], shape: AttentionShape) -> (Vec<f32>, Vec<f32>) {
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim,
    } = shape;
    let hidden = shape.hidden();
    let row = 3 * hidden as isize;
    let mut context = vec![0f32; batch * seq * hidden];
    let mut probs = vec![0f32; batch * heads * seq * seq];
    let context_ptr = SharedMut(context.as_mut_ptr());
    probs
        .par_chunks_mut(seq * seq)
        .zip(bias.par_chunks(seq * seq))
        .enumerate()
        .for_each(|(task, (p, bias))| {
            let (b, h) = (task / heads, task % heads);
            let base = b * seq * 3 * hidden + h * 3 * head_dim;
            let q = qkv[base..].as_ptr();
            let k = qkv[base + head_dim..].as_ptr();
            let v = qkv[base + 2 * head_dim..].as_ptr();
            // SAFETY: q, k, v address `seq` rows of `head_dim` values `row` apart inside qkv;
            // p is this task's `seq x seq` block.
            unsafe {
                matmul(
                    (seq, seq, head_dim),
                    p.as_mut_ptr(),
                    (seq as isize, 1),
                    q,
                    (row, 1),
                    k,
                    (1, row),
                    shape.scale(),
                )
            };
            softmax_rows(p, bias, seq);
            // SAFETY: this task's head occupies columns h*head_dim.. of every row of its
            // batch element in the context; no other task writes them.
            unsafe {
                matmul(
                    (seq, head_dim, seq),
                    context_ptr.get().add(b * seq * hidden + h * head_dim),
                    (hidden as isize, 1),
                    p.as_ptr(),
                    (seq as isize, 1),
                    v,
                    (row, 1),
                    1.0,
                )
            };
        });
    (context, probs)
}

#[derive(Debug, Clone)]
struct AttentionState {
    qkv: FlexTensor,
    probs: FlexTensor,
    shape: AttentionShape,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let shape = ops.state.shape;
        let AttentionShape {
            batch,
            seq,
            heads,
            head_dim,
        } = shape;
        let hidden = shape.hidden();
        let row = 3 * hidden as isize;
        let qkv = values(&ops.state.qkv);
        let probs = values(&ops.state.probs);
        let d_out = values(&grad);
        let mut d_qkv = vec![0f32; qkv.len()];
        let d_ptr = SharedMut(d_qkv.as_mut_ptr());
        probs
            .par_chunks(seq * seq)
            .enumerate()
            .for_each(|(task, p)| {
                let (b, h) = (task / heads, task % heads);
                let base = b * seq * 3 * hidden + h * 3 * head_dim;
                let q = qkv[base..].as_ptr();
                let k = qkv[base + head_dim..].as_ptr();
                let v = qkv[base + 2 * head_dim..].as_ptr();
                let d_o = d_out[b * seq * hidden + h * head_dim..].as_ptr();
                let mut d_s = vec![0f32; seq * seq];
                // SAFETY: as in the forward pass; this task writes only its head's q, k and v
                // columns of d_qkv.
                unsafe {
                    let d_base = d_ptr.get().add(base);
                    // dV = P^T dO
                    matmul(
                        (seq, head_dim, seq),
                        d_base.add(2 * head_dim),
                        (row, 1),
                        p.as_ptr(),
                        (1, seq as isize),
                        d_o,
                        (hidden as isize, 1),
                        1.0,
                    );
                    // dP = dO V^T
                    matmul(
                        (seq, seq, head_dim),
                        d_s.as_mut_ptr(),
                        (seq as isize, 1),
                        d_o,
                        (hidden as isize, 1),
                        v,
                        (1, row),
                        1.0,
                    );
                    // dS = P * (dP - rowsum(dP * P))
                    for (ds, pr) in d_s.chunks_mut(seq).zip(p.chunks(seq)) {
                        let dot: f32 = ds.iter().zip(pr).map(|(a, b)| a * b).sum();
                        for (x, &pv) in ds.iter_mut().zip(pr) {
                            *x = pv * (*x - dot);
                        }
                    }
                    // dQ = scale dS K
                    matmul(
                        (seq, head_dim, seq),
                        d_base,
                        (row, 1),
                        d_s.as_ptr(),
                        (seq as isize, 1),
                        k,
                        (row, 1),
                        shape.scale(),
                    );
                    // dK = scale dS^T Q
                    matmul(
                        (seq, head_dim, seq),
                        d_base.add(head_dim),
                        (row, 1),
                        d_s.as_ptr(),
                        (1, seq as isize),
                        q,
                        (row, 1),
                        shape.scale(),
                    );
                }
            });
        grads.register::<Flex>(parent.id, new_tensor(d_qkv, &[batch, seq, 3 * hidden]));
    }
}

/// BLOOM self-attention from the fused projection `qkv` (`[batch, seq, 3 * hidden]`, viewed as
/// `(heads, 3, head_dim)` per position) and the additive `bias` (`[batch, heads, seq, seq]`,
/// no gradient): `softmax(q k^T / sqrt(head_dim) + bias) v` with heads merged back, as one
/// fused op. `None` off the flex backend.
pub fn attention(qkv: &Tensor<3>, bias: &Tensor<4>, heads: usize) -> Option<Tensor<3>> {
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
        let (context, _) = attention_forward(values(&plain), values(&bias_values), shape);
        return Some(Tensor::from_primitive::<Flex>(new_tensor(
            context, &out_shape,
        )));
    }
    let qkv = autodiff_primitive(qkv)?;
    let input = contiguous(qkv.primitive().clone());
    let (context, probs) = attention_forward(values(&input), values(&bias_values), shape);
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
            },
            new_tensor(context, &out_shape),
        ),
        OpsKind::UnTracked(prep) => prep.finish(new_tensor(context, &out_shape)),
    };
    Some(Tensor::from_primitive::<Ad>(output))
}

// ---------------------------------------------------------------------------------------------
// Cross entropy

/// Softmax of each row of `logits` in place; returns the summed `-log p[target]` of the rows.
fn softmax_nll_rows(logits: &mut [f32], targets: &[i64], width: usize) -> f64 {
    let mut total = 0f64;
    for (row, &target) in logits.chunks_mut(width).zip(targets) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let picked = row[target as usize];
        let mut sum = 0f32;
        exp_shifted(row, max);
        for &v in row.iter() {
            sum += v;
        }
        total += f64::from(sum.ln() + max - picked);
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
    total
}

multiversion! {
    fn exp_shifted(row: &mut [f32], max: f32) {
        for v in row.iter_mut() {
            *v = exp_approx(*v - max);
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
        let shape = ops.state.probs.layout().shape().to_vec();
        let targets = &ops.state.targets;
        let width = shape[1];
        let scale = g / targets.len() as f32;
        let mut d = values(&ops.state.probs).to_vec();
        let per = rows_per_task(targets.len());
        d.par_chunks_mut(per * width)
            .zip(targets.par_chunks(per))
            .for_each(|(d, targets)| {
                for (row, &t) in d.chunks_mut(width).zip(targets) {
                    row[t as usize] -= 1.0;
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            });
        grads.register::<Flex>(parent.id, new_tensor(d, &shape));
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
    let mut new_p = vec![0f32; pv.len()];
    let mut new_m = vec![0f32; pv.len()];
    let mut new_v = vec![0f32; pv.len()];
    let (b1, b2) = (step.beta_1, step.beta_2);
    let correction_1 = 1.0 - b1.powi(step.time);
    let correction_2 = 1.0 - b2.powi(step.time);
    let decay_rate = step.lr * f64::from(step.weight_decay);
    let keep = (1.0 - decay_rate) as f32;
    let lr = step.lr as f32;
    let mv = m.as_ref().map(values);
    let vv = v.as_ref().map(values);
    if mv.is_some_and(|m| m.len() != pv.len()) || vv.is_some_and(|v| v.len() != pv.len()) {
        return None;
    }
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
            let outputs = np.iter_mut().zip(nm.iter_mut()).zip(nv.iter_mut());
            for (i, ((np, nm), nv)) in outputs.enumerate() {
                let gi = g[i];
                let m1 = match m {
                    Some(m) => m[i] * b1 + gi * (1.0 - b1),
                    None => gi * (1.0 - b1),
                };
                let m2 = match v {
                    Some(v) => v[i] * b2 + gi * gi * (1.0 - b2),
                    None => gi * gi * (1.0 - b2),
                };
                let delta = (m1 / correction_1) / ((m2 / correction_2).sqrt() + step.epsilon);
                let decayed = if decay_rate == 0.0 { p[i] } else { p[i] * keep };
                *np = decayed - delta * lr;
                *nm = m1;
                *nv = m2;
            }
        });
    let wrap = |values: Vec<f32>| Tensor::from_primitive::<Flex>(new_tensor(values, &shape));
    Some((wrap(new_p), wrap(new_m), wrap(new_v)))
}
