//! The fused CPU kernels give the same values and gradients as burn's composed ops, with
//! autodiff (training) and without (evaluation).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::module::{layer_norm, linear};
use rtune_trainer::kernels::{self, WeightLayout};
use rtune_trainer::matmul::InputPrecision;
use rtune_trainer::model::tensor_values;

fn values(count: usize, seed: u32) -> Vec<f32> {
    (0..count)
        .map(|i| {
            let x = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 10007) as f32;
            x / 10007.0 * 4.0 - 2.0
        })
        .collect()
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tolerance * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

#[test]
fn layer_norm_matches_composed() {
    let (rows, width) = (37, 24);
    let x_data: Vec<f32> = values(rows * width, 1)
        .iter()
        .map(|v| v * 3.0 + 1.0)
        .collect();
    let w_data = values(width, 2);
    let b_data = values(width, 3);
    let upstream = values(rows * width, 4);
    let run = |fused: bool, device: &Device| {
        let x = tensor(x_data.clone(), [rows, width], device).require_grad();
        let w = tensor(w_data.clone(), [width], device).require_grad();
        let b = tensor(b_data.clone(), [width], device).require_grad();
        let y = if fused {
            kernels::layer_norm(&x, &w, &b, 1e-5).expect("flex f32 tensors")
        } else {
            layer_norm(x.clone(), w.clone(), Some(b.clone()), 1e-5)
        };
        let value = tensor_values(y.clone());
        let grads = y
            .mul(tensor(upstream.clone(), [rows, width], device))
            .sum()
            .backward();
        (
            value,
            tensor_values(x.grad(&grads).expect("x grad")),
            tensor_values(w.grad(&grads).expect("w grad")),
            tensor_values(b.grad(&grads).expect("b grad")),
        )
    };
    let device = Device::flex().autodiff();
    let fused = run(true, &device);
    let composed = run(false, &device);
    assert_close(&fused.0, &composed.0, 1e-5, "value");
    assert_close(&fused.1, &composed.1, 1e-4, "dx");
    assert_close(&fused.2, &composed.2, 1e-4, "dweight");
    assert_close(&fused.3, &composed.3, 1e-4, "dbias");
    // Without autodiff.
    let plain = Device::flex();
    let x = tensor(x_data.clone(), [rows, width], &plain);
    let w = tensor(w_data.clone(), [width], &plain);
    let b = tensor(b_data.clone(), [width], &plain);
    let fused = kernels::layer_norm(&x, &w, &b, 1e-5).expect("flex f32 tensors");
    assert_close(
        &tensor_values(fused),
        &tensor_values(layer_norm(x, w, Some(b), 1e-5)),
        1e-5,
        "plain value",
    );
}

/// Attention composed from burn ops, as `model.rs` does on other backends.
fn composed_attention(qkv: Tensor<3>, bias: Tensor<4>, heads: usize) -> Tensor<3> {
    let [b, s, width] = qkv.dims();
    let head_dim = width / (3 * heads);
    let fused = qkv.reshape([b, s, heads, 3, head_dim]);
    let part = |j: usize| {
        fused
            .clone()
            .narrow(3, j, 1)
            .reshape([b, s, heads, head_dim])
            .swap_dims(1, 2)
    };
    let scores = part(0)
        .matmul(part(1).swap_dims(2, 3))
        .mul_scalar(1.0 / (head_dim as f64).sqrt())
        .add(bias);
    softmax(scores, 3)
        .matmul(part(2))
        .swap_dims(1, 2)
        .reshape([b, s, heads * head_dim])
}

#[test]
fn attention_matches_composed() {
    let (batch, seq, heads, head_dim) = (2, 9, 3, 4);
    let width = 3 * heads * head_dim;
    let qkv_data = values(batch * seq * width, 5);
    // A causal mask with a padded first position in the second sequence, plus a slope term.
    let mut bias_data = vec![0f32; batch * heads * seq * seq];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq {
                for j in 0..seq {
                    let masked = j > i || (b == 1 && j == 0);
                    bias_data[((b * heads + h) * seq + i) * seq + j] = if masked {
                        -1e9
                    } else {
                        -0.25 * (h as f32 + 1.0) * j as f32
                    };
                }
            }
        }
    }
    let upstream = values(batch * seq * heads * head_dim, 6);
    let run = |fused: bool, device: &Device| {
        let qkv = tensor(qkv_data.clone(), [batch, seq, width], device).require_grad();
        let bias = tensor(bias_data.clone(), [batch, heads, seq, seq], device);
        let y = if fused {
            kernels::attention(&qkv, &bias, heads, InputPrecision::F32).expect("flex f32 tensors")
        } else {
            composed_attention(qkv.clone(), bias, heads)
        };
        let value = tensor_values(y.clone());
        let up = tensor(upstream.clone(), [batch, seq, heads * head_dim], device);
        let grads = y.mul(up).sum().backward();
        (value, tensor_values(qkv.grad(&grads).expect("qkv grad")))
    };
    let device = Device::flex().autodiff();
    let (fused_value, fused_grad) = run(true, &device);
    let (value, grad) = run(false, &device);
    assert_close(&fused_value, &value, 1e-5, "value");
    assert_close(&fused_grad, &grad, 1e-4, "dqkv");
    let plain = Device::flex();
    let qkv = tensor(qkv_data.clone(), [batch, seq, width], &plain);
    let bias = tensor(bias_data.clone(), [batch, heads, seq, seq], &plain);
    let fused =
        kernels::attention(&qkv, &bias, heads, InputPrecision::F32).expect("flex f32 tensors");
    assert_close(
        &tensor_values(fused),
        &tensor_values(composed_attention(qkv, bias, heads)),
        1e-5,
        "plain value",
    );
}

#[test]
fn linear_matches_composed() {
    let (batch, rows, inputs, outputs) = (2, 19, 23, 37);
    let x_data = values(batch * rows * inputs, 9);
    let w_data = values(inputs * outputs, 10);
    let b_data = values(outputs, 11);
    let upstream = values(batch * rows * outputs, 12);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        for with_bias in [false, true] {
            let w_shape = match layout {
                WeightLayout::InOut => [inputs, outputs],
                WeightLayout::OutIn => [outputs, inputs],
            };
            let run = |fused: Option<InputPrecision>, device: &Device| {
                let x = tensor(x_data.clone(), [batch, rows, inputs], device).require_grad();
                let w = tensor(w_data.clone(), w_shape, device).require_grad();
                let b = tensor(b_data.clone(), [outputs], device).require_grad();
                let bias = with_bias.then_some(&b);
                let y = match fused {
                    Some(precision) => {
                        kernels::linear(&x, &w, bias, layout, precision).expect("flex f32 tensors")
                    }
                    None => {
                        let weight = match layout {
                            WeightLayout::InOut => w.clone(),
                            WeightLayout::OutIn => w.clone().transpose(),
                        };
                        linear(x.clone(), weight, bias.cloned())
                    }
                };
                let value = tensor_values(y.clone());
                let up = tensor(upstream.clone(), [batch, rows, outputs], device);
                let grads = y.mul(up).sum().backward();
                let b_grad = with_bias.then(|| tensor_values(b.grad(&grads).expect("b grad")));
                (
                    value,
                    tensor_values(x.grad(&grads).expect("x grad")),
                    tensor_values(w.grad(&grads).expect("w grad")),
                    b_grad,
                )
            };
            let what = format!("{layout:?} bias={with_bias}");
            let device = Device::flex().autodiff();
            let fused = run(Some(InputPrecision::F32), &device);
            let composed = run(None, &device);
            assert_close(&fused.0, &composed.0, 1e-5, &format!("{what} value"));
            assert_close(&fused.1, &composed.1, 1e-4, &format!("{what} dx"));
            assert_close(&fused.2, &composed.2, 1e-4, &format!("{what} dw"));
            if with_bias {
                let (fused_b, b) = (fused.3.expect("bias"), composed.3.expect("bias"));
                assert_close(&fused_b, &b, 1e-4, &format!("{what} db"));
            }
            // bf16 products: close to f32, but not equal. Each input keeps 8 significant bits
            // (relative error up to 2^-9), and the sums run over 23 to 38 products of values
            // up to 2 in magnitude, so errors of a few hundredths are expected (tests/matmul.rs
            // checks the bf16 arithmetic itself exactly).
            let bf16 = run(Some(InputPrecision::Bf16), &device);
            assert_close(&bf16.0, &composed.0, 0.1, &format!("{what} bf16 value"));
            assert_close(&bf16.2, &composed.2, 0.1, &format!("{what} bf16 dw"));
            assert_ne!(bf16.0, fused.0, "{what}: bf16 computed in f32?");
            // Without autodiff.
            let plain = Device::flex();
            let x = tensor(x_data.clone(), [batch, rows, inputs], &plain);
            let w = tensor(w_data.clone(), w_shape, &plain);
            let b = tensor(b_data.clone(), [outputs], &plain);
            let fused =
                kernels::linear(&x, &w, with_bias.then_some(&b), layout, InputPrecision::F32)
                    .expect("flex f32 tensors");
            assert_close(
                &tensor_values(fused),
                &composed.0,
                1e-5,
                &format!("{what} plain value"),
            );
        }
    }
    // A weight that does not fit the input is declined (the caller falls back to burn's ops).
    let device = Device::flex();
    let x = tensor(x_data.clone(), [batch, rows, inputs], &device);
    let w = tensor(w_data.clone(), [outputs, inputs], &device);
    assert!(kernels::linear(&x, &w, None, WeightLayout::InOut, InputPrecision::F32).is_none());
}

#[test]
fn cross_entropy_matches_composed() {
    let (rows, vocab) = (6, 11);
    let data: Vec<f32> = values(rows * vocab, 7).iter().map(|v| v * 4.0).collect();
    let targets = vec![0i64, 10, 3, 5, 5, 1];
    let run = |fused: bool, device: &Device| {
        let x = tensor(data.clone(), [rows, vocab], device).require_grad();
        let loss = if fused {
            kernels::cross_entropy(&x, &targets).expect("flex f32 tensors")
        } else {
            let t =
                Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [rows, 1]), device);
            log_softmax(x.clone(), 1)
                .gather(1, t)
                .sum()
                .neg()
                .div_scalar(rows as f64)
                .reshape([1])
        };
        let value = tensor_values(loss.clone());
        let grads = loss.mul_scalar(2.0).sum().backward();
        (value, tensor_values(x.grad(&grads).expect("grad")))
    };
    let device = Device::flex().autodiff();
    let (fused_value, fused_grad) = run(true, &device);
    let (value, grad) = run(false, &device);
    assert_close(&fused_value, &value, 1e-5, "loss");
    assert_close(&fused_grad, &grad, 1e-5, "dlogits");
    // A target outside the vocabulary is refused (the caller falls back to burn's ops).
    let x = tensor(data.clone(), [rows, vocab], &device);
    assert!(kernels::cross_entropy(&x, &[0, 1, 2, 3, 4, 11]).is_none());
}

#[test]
fn gelu_without_autodiff_matches_with() {
    let data = values(300, 8);
    let plain = rtune_trainer::model::bloom_gelu(tensor(data.clone(), [300], &Device::flex()));
    let tracked = rtune_trainer::model::bloom_gelu(
        tensor(data, [300], &Device::flex().autodiff()).require_grad(),
    );
    assert_close(
        &tensor_values(plain),
        &tensor_values(tracked),
        1e-6,
        "value",
    );
}
