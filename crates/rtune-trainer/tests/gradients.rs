//! The surrogate-gradient ops give the same values and gradients as burn's composed ops.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use rtune_trainer::model::{softmax_last, target_log_probs, tensor_values};

fn values(count: usize, seed: u32) -> Vec<f32> {
    (0..count)
        .map(|i| {
            let x = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 10007) as f32;
            x / 10007.0 * 8.0 - 4.0
        })
        .collect()
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tolerance, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn softmax_surrogate_matches_composed_softmax() {
    let device = Device::flex().autodiff();
    let shape = [2, 3, 5, 7];
    let data = values(2 * 3 * 5 * 7, 1);
    let weights = Tensor::<4>::from_data(TensorData::new(values(210, 2), shape), &device);
    let run = |fast: bool| {
        let x =
            Tensor::<4>::from_data(TensorData::new(data.clone(), shape), &device).require_grad();
        let y = if fast {
            softmax_last(x.clone())
        } else {
            softmax(x.clone(), 3)
        };
        let value = tensor_values(y.clone());
        let grads = y.mul(weights.clone()).sum().backward();
        (value, tensor_values(x.grad(&grads).expect("grad")))
    };
    let (fast_value, fast_grad) = run(true);
    let (value, grad) = run(false);
    assert_close(&fast_value, &value, 1e-6, "value");
    assert_close(&fast_grad, &grad, 1e-6, "grad");
}

#[test]
fn log_prob_surrogate_matches_composed_log_softmax() {
    let device = Device::flex().autodiff();
    let data: Vec<f32> = values(4 * 9, 3).iter().map(|v| v * 5.0).collect();
    let targets = vec![0i64, 8, 3, 5];
    let run = |fast: bool| {
        let x =
            Tensor::<2>::from_data(TensorData::new(data.clone(), [4, 9]), &device).require_grad();
        let t = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [4, 1]), &device);
        let picked = if fast {
            target_log_probs(x.clone(), t)
        } else {
            log_softmax(x.clone(), 1).gather(1, t)
        };
        let value = tensor_values(picked.clone());
        let grads = picked.sum().backward();
        (value, tensor_values(x.grad(&grads).expect("grad")))
    };
    let (fast_value, fast_grad) = run(true);
    let (value, grad) = run(false);
    assert_close(&fast_value, &value, 1e-5, "value");
    assert_close(&fast_grad, &grad, 1e-6, "grad");
}

#[test]
fn gelu_surrogate_matches_composed_gelu() {
    let device = Device::flex().autodiff();
    let data = values(64, 5);
    let composed = |x: Tensor<2>| {
        let inner = x
            .clone()
            .mul(
                x.clone()
                    .mul(x.clone())
                    .mul_scalar(0.044715)
                    .add_scalar(1.0),
            )
            .mul_scalar(0.79788456);
        x.mul(inner.tanh().add_scalar(1.0)).mul_scalar(0.5)
    };
    let run = |fast: bool| {
        let x =
            Tensor::<2>::from_data(TensorData::new(data.clone(), [8, 8]), &device).require_grad();
        let y = if fast {
            rtune_trainer::model::bloom_gelu(x.clone())
        } else {
            composed(x.clone())
        };
        let value = tensor_values(y.clone());
        let grads = y.mul_scalar(1.5).sum().backward();
        (value, tensor_values(x.grad(&grads).expect("grad")))
    };
    let (fast_value, fast_grad) = run(true);
    let (value, grad) = run(false);
    assert_close(&fast_value, &value, 1e-5, "value");
    assert_close(&fast_grad, &grad, 1e-5, "grad");
}
