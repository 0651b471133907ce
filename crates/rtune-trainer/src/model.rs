//! BLOOM causal LM (as `transformers.BloomForCausalLM`) on burn.
//!
//! Parameters use Hugging Face's names and their own layout except for linear weights, which are
//! stored `[in, out]` (burn's `linear` convention) and transposed on load/save. Every parameter
//! gets a deterministic [`ParamId`] (its position in [`Bloom::parameter_names`]), so optimizer
//! state saved with one model instance applies to another loaded from the same checkpoint.

use crate::config::{BloomConfig, alibi_slopes};
use crate::kernels::{self, WeightLayout};
use crate::matmul::InputPrecision;
use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use burn::tensor::module::{embedding, layer_norm, linear};

/// Additive attention-mask value for masked positions. Finite (unlike -inf) so a query whose
/// keys are all masked (a padding position) gets a harmless uniform distribution, not NaN.
const MASKED: f32 = -1e9;

/// A dense layer `y = x W + b` with `W` stored `[in, out]`.
#[derive(Module, Debug)]
pub struct Dense {
    /// Weight `[in, out]` (the transpose of PyTorch's).
    pub weight: Param<Tensor<2>>,
    /// Bias `[out]`.
    pub bias: Param<Tensor<1>>,
}

/// `tensor` (an f32 parameter) in the compute dtype `dtype` (see [`crate::precision`]).
fn in_dtype<const D: usize>(tensor: Tensor<D>, dtype: FloatDType) -> Tensor<D> {
    if dtype == FloatDType::F32 {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

impl Dense {
    fn forward<const D: usize>(&self, input: Tensor<D>, mask: &BatchMask) -> Tensor<D> {
        let (weight, bias) = (self.weight.val(), self.bias.val());
        // The fused kernel covers f32 activations on the CPU backend; it declines the rest.
        if let Some(output) = kernels::linear(
            &input,
            &weight,
            Some(&bias),
            WeightLayout::InOut,
            mask.matmul,
        ) {
            return output;
        }
        let dtype = mask.dtype;
        let weight = in_dtype(weight, dtype);
        linear(input, weight, Some(in_dtype(bias, dtype)))
    }
}

/// Layer normalisation over the last dimension (biased variance, like PyTorch).
#[derive(Module, Debug)]
pub struct Norm {
    /// Scale `[hidden]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[hidden]`.
    pub bias: Param<Tensor<1>>,
}

impl Norm {
    fn forward<const D: usize>(
        &self,
        input: Tensor<D>,
        epsilon: f64,
        dtype: FloatDType,
    ) -> Tensor<D> {
        let weight = in_dtype(self.weight.val(), dtype);
        let bias = in_dtype(self.bias.val(), dtype);
        // The fused kernel covers f32 on the CPU backend; it declines everything else.
        if let Some(output) = kernels::layer_norm(&input, &weight, &bias, epsilon) {
            return output;
        }
        layer_norm(input, weight, Some(bias), epsilon)
    }
}

/// Self-attention with a fused query/key/value projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused projection; its output is viewed as `(batch, seq, heads, 3, head_dim)`.
    pub query_key_value: Dense,
    /// Output projection.
    pub dense: Dense,
}

/// The feed-forward block.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Up projection to `4 * hidden`.
    pub dense_h_to_4h: Dense,
    /// Down projection.
    pub dense_4h_to_h: Dense,
}

/// One transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub input_layernorm: Norm,
    /// Attention.
    pub self_attention: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: Norm,
    /// MLP.
    pub mlp: Mlp,
}

/// Softmax over the last dimension of a 4-D tensor.
///
/// With autodiff, burn composes softmax from max/sub/exp/sum/div and its `exp` node recomputes
/// the exponential in the backward pass. Here the value comes from the backend's fused softmax
/// on the plain tensor, and the gradient from a surrogate `f(x) = p*x - p*sum(p*x)` whose
/// Jacobian `diag(p) - p p^T` is softmax's: `p + (f - detach(f))` has value `p` exactly (the
/// difference is computed from identical floats) and softmax's gradient.
pub fn softmax_last(x: Tensor<4>) -> Tensor<4> {
    if !x.is_autodiff() {
        return softmax(x, 3);
    }
    let p = softmax(x.clone().inner(), 3);
    let weighted = x.mul(p.clone());
    let f = weighted.clone() - weighted.sum_dim(3).mul(p.clone());
    let f_value = f.clone().detach();
    (f - f_value).add(p)
}

/// `log_softmax(x)[row, target[row]]` for a 2-D `x`, with the same approach as
/// [`softmax_last`]: log-sum-exp computed once on the plain tensor, gradient `onehot - p`
/// through a surrogate, so no exponential is recomputed in the backward pass.
pub fn target_log_probs(x: Tensor<2>, targets: Tensor<2, Int>) -> Tensor<2> {
    if !x.is_autodiff() {
        return log_softmax(x, 1).gather(1, targets);
    }
    let plain = x.clone().inner();
    let max = plain.clone().max_dim(1);
    let log_sum_exp = plain
        .clone()
        .sub(max.clone())
        .exp()
        .sum_dim(1)
        .log()
        .add(max);
    let p = softmax(plain, 1);
    // d/dx sum(p * x) = p (p constant): the gradient of log-sum-exp.
    let expected = x.clone().mul(p).sum_dim(1);
    let expected_value = expected.clone().detach();
    let lse = (expected - expected_value).add(log_sum_exp);
    x.gather(1, targets) - lse
}

/// BLOOM's tanh approximation of GELU (`bloom_gelu_forward`):
/// `0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2)))`, computed through the identity
/// `0.5 (1 + tanh(z)) = sigmoid(2 z)`, which is mathematically the same and needs fewer tensor
/// ops (and no scalar `tanhf`, which dominated the CPU profile).
///
/// With autodiff, the value and its derivative are computed on the plain tensor and the
/// gradient flows through the surrogate `x * gelu'(x)` (as in [`softmax_last`]); burn's
/// composed version records seven nodes and recomputes the sigmoid in the backward pass.
pub fn bloom_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    // 2 * 0.79788456 * x * (1 + 0.044715 x^2) = (A x^2 + B) x, with the constants folded.
    const B: f64 = 2.0 * 0.79788456;
    const A: f64 = B * 0.044715;
    if let Some(output) = kernels::gelu(&x) {
        return output;
    }
    if !x.is_autodiff() {
        let inner = x
            .clone()
            .mul(x.clone())
            .mul_scalar(A)
            .add_scalar(B)
            .mul(x.clone());
        return x.mul(sigmoid(inner));
    }
    let plain = x.clone().inner();
    let square = plain.clone().mul(plain.clone());
    let gate = sigmoid(
        square
            .clone()
            .mul_scalar(A)
            .add_scalar(B)
            .mul(plain.clone()),
    );
    let value = plain.clone().mul(gate.clone());
    // d/dx [x s(z)] = s + x s (1 - s) z', z' = 3 A x^2 + B.
    let slope = gate.clone().neg().add_scalar(1.0).mul(gate.clone());
    let derivative = slope
        .mul(square.mul_scalar(3.0 * A).add_scalar(B))
        .mul(plain)
        .add(gate);
    let linear = x.mul(derivative);
    let linear_value = linear.clone().detach();
    (linear - linear_value).add(value)
}

/// The whole model: embeddings, blocks, final norm; the lm_head is tied to the embeddings.
#[derive(Module, Debug)]
pub struct Bloom {
    /// Token embeddings `[vocab, hidden]`, also the lm_head.
    pub word_embeddings: Param<Tensor<2>>,
    /// Norm right after the embedding lookup.
    pub word_embeddings_layernorm: Norm,
    /// The blocks.
    pub h: Vec<Block>,
    /// Final norm.
    pub ln_f: Norm,
    /// Number of heads.
    pub n_head: usize,
    /// Layer-norm epsilon.
    pub epsilon: f64,
    /// `apply_residual_connection_post_layernorm`.
    pub residual_post_layernorm: bool,
}

/// Attention masks for one batch, built on the host.
#[derive(Debug, Clone)]
pub struct BatchMask {
    /// `[batch, heads, seq, seq]`: ALiBi bias plus [`MASKED`] for future and padding keys.
    pub bias: Tensor<4>,
    /// The dtype of the activations (f32 unless [`BatchMask::with_precision`] changed it).
    pub dtype: FloatDType,
    /// The input precision of the matrix products that the CPU kernels compute
    /// ([`crate::kernels::linear`], [`crate::kernels::attention`]).
    pub matmul: InputPrecision,
}

impl BatchMask {
    /// Builds the additive bias from `attention_mask` (`batch * seq` values, 1 = real token).
    ///
    /// As in HF, the ALiBi position of a key is the number of real tokens before it
    /// (`(cumsum(mask) - 1) * mask`), so left padding shifts positions.
    pub fn new(
        attention_mask: &[u8],
        batch: usize,
        seq: usize,
        n_head: usize,
        device: &Device,
    ) -> Self {
        let slopes = alibi_slopes(n_head);
        let mut bias = vec![0f32; batch * n_head * seq * seq];
        for b in 0..batch {
            let row = &attention_mask[b * seq..(b + 1) * seq];
            let mut positions = vec![0f32; seq];
            let mut count = 0f32;
            for (j, &m) in row.iter().enumerate() {
                if m != 0 {
                    positions[j] = count;
                    count += 1.0;
                }
            }
            for (h, &slope) in slopes.iter().enumerate() {
                let slope = slope as f32;
                let head = &mut bias[(b * n_head + h) * seq * seq..][..seq * seq];
                for (i, query) in head.chunks_exact_mut(seq).enumerate() {
                    // Keys up to the query's position: ALiBi unless padding; later ones masked.
                    let (visible, future) = query.split_at_mut(i + 1);
                    for ((value, &m), &position) in visible.iter_mut().zip(row).zip(&positions) {
                        *value = if m == 0 { MASKED } else { slope * position };
                    }
                    future.fill(MASKED);
                }
            }
        }
        let bias = Tensor::<4>::from_data(TensorData::new(bias, [batch, n_head, seq, seq]), device);
        Self {
            bias,
            dtype: FloatDType::F32,
            matmul: InputPrecision::F32,
        }
    }

    /// The same mask for a forward pass in `precision`.
    ///
    /// On the CPU backend bf16 means bf16 matrix products (inputs rounded to bf16, f32
    /// accumulation, in the fused kernels) with f32 activations: the CPU has bf16 dot-product
    /// instructions but no bf16 arithmetic for the element-wise ops, which burn would run by
    /// converting to f32 and back. Elsewhere (CUDA), and for f16, the activations themselves
    /// take the compute dtype.
    pub fn with_precision(self, precision: crate::precision::Precision) -> Self {
        if precision == crate::precision::Precision::Bf16 && kernels::is_flex_f32(&self.bias) {
            return Self {
                matmul: InputPrecision::Bf16,
                ..self
            };
        }
        let dtype = precision.dtype();
        // float16 has no -1e9: the masked entries become its lowest finite value (as HF's
        // `finfo(dtype).min`), not -inf, so fully masked padding rows stay finite.
        let bias = if dtype == FloatDType::F16 {
            self.bias.clamp_min(f64::from(half::f16::MIN.to_f32()))
        } else {
            self.bias
        };
        Self {
            bias: in_dtype(bias, dtype),
            dtype,
            matmul: self.matmul,
        }
    }
}

impl Block {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: &BatchMask,
        n_head: usize,
        eps: f64,
        residual_post_ln: bool,
    ) -> Tensor<3> {
        let [b, s, hidden] = x.dims();
        let head_dim = hidden / n_head;
        let dt = mask.dtype;
        let ln = self.input_layernorm.forward(x.clone(), eps, dt);
        let residual = if residual_post_ln { ln.clone() } else { x };
        let fused = self.self_attention.query_key_value.forward(ln, mask);
        let context = match kernels::attention(&fused, &mask.bias, n_head, mask.matmul) {
            Some(context) => context,
            None => composed_attention(fused.reshape([b, s, n_head, 3, head_dim]), mask),
        };
        let x = residual + self.self_attention.dense.forward(context, mask);
        let ln = self.post_attention_layernorm.forward(x.clone(), eps, dt);
        let residual = if residual_post_ln { ln.clone() } else { x };
        residual
            + self
                .mlp
                .dense_4h_to_h
                .forward(bloom_gelu(self.mlp.dense_h_to_4h.forward(ln, mask)), mask)
    }
}

/// Attention from the fused projection viewed as `[batch, seq, heads, 3, head_dim]`, composed
/// from burn tensor ops (for backends without [`kernels::attention`]).
fn composed_attention(fused: Tensor<5>, mask: &BatchMask) -> Tensor<3> {
    let [b, s, n_head, _, head_dim] = fused.dims();
    let hidden = n_head * head_dim;
    let part = |j: usize| {
        fused
            .clone()
            .narrow(3, j, 1)
            .reshape([b, s, n_head, head_dim])
            .swap_dims(1, 2)
    };
    let (query, key, value) = (part(0), part(1), part(2));
    // Scaling the queries (b*s*hidden values) rather than the scores (b*heads*s*s) is the
    // same product and saves a pass over the larger tensor, forward and backward.
    let scores = query
        .mul_scalar(1.0 / (head_dim as f64).sqrt())
        .matmul(key.swap_dims(2, 3))
        .add(mask.bias.clone());
    let probs = softmax_last(scores);
    probs.matmul(value).swap_dims(1, 2).reshape([b, s, hidden])
}

/// Standard-normal-ish initialisation for `--init random` (std 0.02 like HF's
/// `initializer_range`), layer norms at weight 1 / bias 0, biases 0.
fn init_values(name: &str, shape: &[usize], rng: &mut impl rand::Rng) -> Vec<f32> {
    let count: usize = shape.iter().product();
    if name.ends_with("layernorm.weight") || name == "ln_f.weight" {
        return vec![1.0; count];
    }
    if name.ends_with(".bias") {
        return vec![0.0; count];
    }
    (0..count)
        .map(|_| {
            // Box-Muller from two uniforms.
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 0.02) as f32
        })
        .collect()
}

/// Parameter values that do not fit the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

/// One parameter: its HF name and its HF (PyTorch) shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Hugging Face name without the `transformer.` prefix.
    pub name: String,
    /// Shape in the HF checkpoint (`[out, in]` for linear weights).
    pub hf_shape: Vec<usize>,
}

impl ParamSpec {
    /// True for a linear weight, stored transposed in the model.
    pub fn is_linear_weight(&self) -> bool {
        self.hf_shape.len() == 2 && self.name != "word_embeddings.weight"
    }

    /// True for parameters HF Trainer exempts from weight decay (biases and layer norms).
    pub fn exempt_from_weight_decay(&self) -> bool {
        self.name.ends_with(".bias")
            || self.name.contains("layernorm")
            || self.name.starts_with("ln_f")
    }
}

/// All parameters of a BLOOM model in a fixed order (the order defines their [`ParamId`]s).
pub fn parameter_specs(config: &BloomConfig) -> Vec<ParamSpec> {
    let h = config.hidden_size;
    let mut specs = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| {
        specs.push(ParamSpec {
            name,
            hf_shape: shape,
        })
    };
    push("word_embeddings.weight".into(), vec![config.vocab_size, h]);
    push("word_embeddings_layernorm.weight".into(), vec![h]);
    push("word_embeddings_layernorm.bias".into(), vec![h]);
    for layer in 0..config.n_layer {
        let p = format!("h.{layer}.");
        push(format!("{p}input_layernorm.weight"), vec![h]);
        push(format!("{p}input_layernorm.bias"), vec![h]);
        push(
            format!("{p}self_attention.query_key_value.weight"),
            vec![3 * h, h],
        );
        push(
            format!("{p}self_attention.query_key_value.bias"),
            vec![3 * h],
        );
        push(format!("{p}self_attention.dense.weight"), vec![h, h]);
        push(format!("{p}self_attention.dense.bias"), vec![h]);
        push(format!("{p}post_attention_layernorm.weight"), vec![h]);
        push(format!("{p}post_attention_layernorm.bias"), vec![h]);
        push(format!("{p}mlp.dense_h_to_4h.weight"), vec![4 * h, h]);
        push(format!("{p}mlp.dense_h_to_4h.bias"), vec![4 * h]);
        push(format!("{p}mlp.dense_4h_to_h.weight"), vec![h, 4 * h]);
        push(format!("{p}mlp.dense_4h_to_h.bias"), vec![h]);
    }
    push("ln_f.weight".into(), vec![h]);
    push("ln_f.bias".into(), vec![h]);
    specs
}

/// The deterministic id of the parameter at `index` in [`parameter_specs`].
pub fn param_id(index: usize) -> ParamId {
    ParamId::from(index as u64 + 1)
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

impl Bloom {
    /// Builds a model from per-parameter values in HF layout, in [`parameter_specs`] order;
    /// an error when their number or sizes do not fit the config.
    pub fn from_hf_values(
        config: &BloomConfig,
        values: Vec<Vec<f32>>,
        device: &Device,
    ) -> Result<Self, ShapeError> {
        let specs = parameter_specs(config);
        if values.len() != specs.len() {
            return Err(ShapeError(format!(
                "{} parameter tensors given, the config needs {}",
                values.len(),
                specs.len()
            )));
        }
        for (spec, value) in specs.iter().zip(&values) {
            let expected: usize = spec.hf_shape.iter().product();
            if value.len() != expected {
                return Err(ShapeError(format!(
                    "{} has {} values, shape {:?} needs {expected}",
                    spec.name,
                    value.len(),
                    spec.hf_shape
                )));
            }
        }
        let mut slots: Vec<Slot> = specs
            .iter()
            .zip(values)
            .enumerate()
            .map(|(index, (spec, value))| {
                let id = param_id(index);
                if spec.hf_shape.len() == 1 {
                    let shape = [spec.hf_shape[0]];
                    let tensor = Tensor::<1>::from_data(TensorData::new(value, shape), device);
                    Slot::One(Param::initialized(id, tensor).set_require_grad(true))
                } else {
                    let (rows, cols) = (spec.hf_shape[0], spec.hf_shape[1]);
                    let tensor = if spec.is_linear_weight() {
                        let t = transpose(&value, rows, cols);
                        Tensor::<2>::from_data(TensorData::new(t, [cols, rows]), device)
                    } else {
                        Tensor::<2>::from_data(TensorData::new(value, [rows, cols]), device)
                    };
                    Slot::Two(Param::initialized(id, tensor).set_require_grad(true))
                }
            })
            .collect();
        // `assemble` pops from the end.
        slots.reverse();
        Ok(Self::assemble(config, slots))
    }

    fn assemble(config: &BloomConfig, mut slots: Vec<Slot>) -> Self {
        let mut one = |slots: &mut Vec<Slot>| match slots.pop() {
            Some(Slot::One(p)) => p,
            _ => unreachable!("parameter_specs puts a vector here"),
        };
        let two = |slots: &mut Vec<Slot>| match slots.pop() {
            Some(Slot::Two(p)) => p,
            _ => unreachable!("parameter_specs puts a matrix here"),
        };
        let norm = |slots: &mut Vec<Slot>,
                    one: &mut dyn FnMut(&mut Vec<Slot>) -> Param<Tensor<1>>| {
            let weight = one(slots);
            let bias = one(slots);
            Norm { weight, bias }
        };
        let dense = |slots: &mut Vec<Slot>,
                     one: &mut dyn FnMut(&mut Vec<Slot>) -> Param<Tensor<1>>| {
            let weight = two(slots);
            let bias = one(slots);
            Dense { weight, bias }
        };
        let word_embeddings = two(&mut slots);
        let word_embeddings_layernorm = norm(&mut slots, &mut one);
        let mut h = Vec::with_capacity(config.n_layer);
        for _ in 0..config.n_layer {
            let input_layernorm = norm(&mut slots, &mut one);
            let query_key_value = dense(&mut slots, &mut one);
            let attn_dense = dense(&mut slots, &mut one);
            let post_attention_layernorm = norm(&mut slots, &mut one);
            let dense_h_to_4h = dense(&mut slots, &mut one);
            let dense_4h_to_h = dense(&mut slots, &mut one);
            h.push(Block {
                input_layernorm,
                self_attention: Attention {
                    query_key_value,
                    dense: attn_dense,
                },
                post_attention_layernorm,
                mlp: Mlp {
                    dense_h_to_4h,
                    dense_4h_to_h,
                },
            });
        }
        let ln_f = norm(&mut slots, &mut one);
        Self {
            word_embeddings,
            word_embeddings_layernorm,
            h,
            ln_f,
            n_head: config.n_head,
            epsilon: config.layer_norm_epsilon,
            residual_post_layernorm: config.apply_residual_connection_post_layernorm,
        }
    }

    /// A randomly initialised model (HF-style init, seeded).
    pub fn random(config: &BloomConfig, seed: u64, device: &Device) -> Self {
        // The values are generated from the specs, so their shapes always match.
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values = parameter_specs(config)
            .iter()
            .map(|spec| init_values(&spec.name, &spec.hf_shape, &mut rng))
            .collect();
        match Self::from_hf_values(config, values, device) {
            Ok(model) => model,
            Err(error) => unreachable!("generated values match their specs: {error}"),
        }
    }

    /// All parameters as `(spec, values in HF layout)`, in [`parameter_specs`] order.
    pub fn hf_values(&self, config: &BloomConfig) -> Vec<(ParamSpec, Vec<f32>)> {
        let mut vectors: Vec<Tensor<1>> = Vec::new();
        let mut matrices: Vec<Tensor<2>> = Vec::new();
        let mut order: Vec<bool> = Vec::new(); // true = matrix
        let add_norm = |n: &Norm, v: &mut Vec<Tensor<1>>, o: &mut Vec<bool>| {
            v.push(n.weight.val());
            v.push(n.bias.val());
            o.push(false);
            o.push(false);
        };
        matrices.push(self.word_embeddings.val());
        order.push(true);
        add_norm(&self.word_embeddings_layernorm, &mut vectors, &mut order);
        for block in &self.h {
            add_norm(&block.input_layernorm, &mut vectors, &mut order);
            for dense in [
                &block.self_attention.query_key_value,
                &block.self_attention.dense,
            ] {
                matrices.push(dense.weight.val());
                vectors.push(dense.bias.val());
                order.push(true);
                order.push(false);
            }
            add_norm(&block.post_attention_layernorm, &mut vectors, &mut order);
            for dense in [&block.mlp.dense_h_to_4h, &block.mlp.dense_4h_to_h] {
                matrices.push(dense.weight.val());
                vectors.push(dense.bias.val());
                order.push(true);
                order.push(false);
            }
        }
        add_norm(&self.ln_f, &mut vectors, &mut order);
        let mut vectors = vectors.into_iter();
        let mut matrices = matrices.into_iter();
        parameter_specs(config)
            .into_iter()
            .zip(order)
            .map(|(spec, is_matrix)| {
                let values = if is_matrix {
                    let t = matrices.next().map(tensor_values).unwrap_or_default();
                    if spec.is_linear_weight() {
                        transpose(&t, spec.hf_shape[1], spec.hf_shape[0])
                    } else {
                        t
                    }
                } else {
                    vectors.next().map(tensor_values).unwrap_or_default()
                };
                (spec, values)
            })
            .collect()
    }

    /// Final hidden states `[batch, seq, hidden]` for `ids` under `mask`.
    pub fn hidden_states(&self, ids: Tensor<2, Int>, mask: &BatchMask) -> Tensor<3> {
        let eps = self.epsilon;
        let dt = mask.dtype;
        let x = in_dtype(embedding(self.word_embeddings.val(), ids), dt);
        let mut x = self.word_embeddings_layernorm.forward(x, eps, dt);
        for block in &self.h {
            x = block.forward(x, mask, self.n_head, eps, self.residual_post_layernorm);
        }
        self.ln_f.forward(x, eps, dt)
    }

    /// Logits `[batch, seq, vocab]` (tied lm_head), in f32 whatever the compute dtype.
    pub fn logits(&self, ids: Tensor<2, Int>, mask: &BatchMask) -> Tensor<3> {
        let hidden = self.hidden_states(ids, mask);
        self.lm_head(hidden, mask)
    }

    /// The tied lm_head: `hidden` times the transposed word embeddings, in f32.
    fn lm_head<const D: usize>(&self, hidden: Tensor<D>, mask: &BatchMask) -> Tensor<D> {
        let embeddings = self.word_embeddings.val();
        if let Some(logits) =
            kernels::linear(&hidden, &embeddings, None, WeightLayout::OutIn, mask.matmul)
        {
            return logits;
        }
        let lm_head = in_dtype(embeddings, mask.dtype).transpose();
        in_f32(linear(hidden, lm_head, None), mask.dtype)
    }

    /// Mean causal-LM cross entropy over the positions whose label is not `-100`, as HF
    /// computes it (`labels` are `batch * seq` values, shifted inside: position `t` predicts
    /// label `t + 1`). Only the hidden states of counted positions go through the lm_head,
    /// which saves most of its cost when only answer tokens are labelled.
    ///
    /// Returns `None` when no position is labelled.
    pub fn loss(&self, ids: Tensor<2, Int>, mask: &BatchMask, labels: &[i64]) -> Option<Tensor<1>> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let (rows, targets) = shifted_targets(labels, batch, seq);
        if rows.is_empty() {
            return None;
        }
        let hidden = self.hidden_states(ids, mask);
        let width = hidden.dims()[2];
        let hidden = hidden.reshape([batch * seq, width]);
        let count = rows.len();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [count]), &device);
        let selected = hidden.select(0, rows);
        // The cross entropy runs in f32 (as under PyTorch's autocast).
        let logits = self.lm_head(selected, mask);
        if let Some(loss) = kernels::cross_entropy(&logits, &targets) {
            return Some(loss);
        }
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [count, 1]), &device);
        let picked = target_log_probs(logits, targets);
        Some(picked.sum().neg().div_scalar(count as f64).reshape([1]))
    }
}

/// `tensor`, computed in `dtype`, back in f32.
fn in_f32<const D: usize>(tensor: Tensor<D>, dtype: FloatDType) -> Tensor<D> {
    if dtype == FloatDType::F32 {
        tensor
    } else {
        tensor.cast(FloatDType::F32)
    }
}

/// Rows (flattened `b * seq + t`) whose next-token label counts, and those labels.
pub fn shifted_targets(labels: &[i64], batch: usize, seq: usize) -> (Vec<i64>, Vec<i64>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let label = labels[b * seq + t + 1];
            if label != -100 {
                rows.push((b * seq + t) as i64);
                targets.push(label);
            }
        }
    }
    (rows, targets)
}

enum Slot {
    One(Param<Tensor<1>>),
    Two(Param<Tensor<2>>),
}

/// The values of a float tensor as `f32` (converting if the tensor has another float dtype).
pub fn tensor_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}
