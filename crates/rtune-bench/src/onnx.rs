//! A small ONNX interpreter: enough of the format and the operators to run feed-forward
//! networks such as YAHPO Gym's surrogates, without an inference engine.
//!
//! The model is read with `prost` into the few protobuf messages declared here (field numbers
//! from onnx.proto; everything else in the file is skipped), then run node by node in the
//! graph's order. Tensors are dense, row-major, `f32` or `i64` (int32 inputs are widened).
//! An operator or attribute the interpreter does not know is an error naming the node, never a
//! silent wrong answer.

use std::collections::HashMap;

use prost::Message;

/// `ModelProto`, only the fields used here.
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

/// `AttributeProto`.
#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

/// `TensorProto`.
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

/// `ValueInfoProto` (only the name: shapes are taken from the data).
#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
}

// TensorProto.DataType values.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;

/// Why a model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("node `{node}` ({op}): {message}")]
    Node {
        node: String,
        op: String,
        message: String,
    },
    #[error("input `{0}` was not given")]
    MissingInput(String),
    #[error("output `{0}` was never computed")]
    MissingOutput(String),
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32 { shape, .. } | Tensor::I64 { shape, .. } => shape,
        }
    }

    fn len(&self) -> usize {
        match self {
            Tensor::F32 { data, .. } => data.len(),
            Tensor::I64 { data, .. } => data.len(),
        }
    }

    /// The values as `f32`, or None for an integer tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Tensor::F32 { data, .. } => Some(data),
            Tensor::I64 { .. } => None,
        }
    }

    fn ints(&self) -> Option<&[i64]> {
        match self {
            Tensor::I64 { data, .. } => Some(data),
            Tensor::F32 { .. } => None,
        }
    }

    fn from_proto(t: &TensorProto) -> Result<Tensor, OnnxError> {
        let err = |message: String| OnnxError::Tensor {
            name: t.name.clone(),
            message,
        };
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dimension {d}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let count: usize = shape.iter().product();
        let tensor = match t.data_type {
            FLOAT => {
                let data = if t.raw_data.is_empty() {
                    t.float_data.clone()
                } else {
                    t.raw_data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                };
                Tensor::F32 { shape, data }
            }
            INT64 => {
                let data = if t.raw_data.is_empty() {
                    t.int64_data.clone()
                } else {
                    t.raw_data
                        .chunks_exact(8)
                        .map(|b| {
                            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                        })
                        .collect()
                };
                Tensor::I64 { shape, data }
            }
            INT32 => {
                let data = if t.raw_data.is_empty() {
                    t.int32_data.iter().map(|&v| i64::from(v)).collect()
                } else {
                    t.raw_data
                        .chunks_exact(4)
                        .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                        .collect()
                };
                Tensor::I64 { shape, data }
            }
            other => return Err(err(format!("data type {other} is not supported"))),
        };
        if tensor.len() != count {
            return Err(err(format!(
                "{} values for shape {:?}",
                tensor.len(),
                tensor.shape()
            )));
        }
        Ok(tensor)
    }
}

/// A loaded model, ready to run.
#[derive(Clone, Debug)]
pub struct Model {
    nodes: Vec<NodeProto>,
    initializers: HashMap<String, Tensor>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Model {
    /// Reads an ONNX model from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, OnnxError> {
        let model = ModelProto::decode(bytes)?;
        let graph = model.graph.ok_or(OnnxError::NoGraph)?;
        let initializers = graph
            .initializer
            .iter()
            .map(|t| Ok((t.name.clone(), Tensor::from_proto(t)?)))
            .collect::<Result<HashMap<_, _>, OnnxError>>()?;
        let inputs = graph
            .input
            .iter()
            .map(|i| i.name.clone())
            .filter(|name| !initializers.contains_key(name))
            .collect();
        let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
        Ok(Model {
            nodes: graph.node,
            initializers,
            inputs,
            outputs,
        })
    }

    /// The graph's inputs, in order (without the initializers).
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Runs the graph on `inputs` (name, tensor) and returns its outputs in order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<Tensor>, OnnxError> {
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        let given: HashMap<String, Tensor> = inputs.into_iter().collect();
        for name in &self.inputs {
            let Some(tensor) = given.get(name) else {
                return Err(OnnxError::MissingInput(name.clone()));
            };
            values.insert(name.as_str(), tensor.clone());
        }
        for node in &self.nodes {
            let args = node
                .input
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        return Ok(None);
                    }
                    values
                        .get(name.as_str())
                        .or_else(|| self.initializers.get(name))
                        .map(Some)
                        .ok_or_else(|| node_error(node, format!("input `{name}` is not computed")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = eval_node(node, &args)?;
            let Some(name) = node.output.first() else {
                return Err(node_error(node, "no output".into()));
            };
            values.insert(name.as_str(), out);
        }
        self.outputs
            .iter()
            .map(|name| {
                values
                    .remove(name.as_str())
                    .ok_or_else(|| OnnxError::MissingOutput(name.clone()))
            })
            .collect()
    }
}

fn node_error(node: &NodeProto, message: String) -> OnnxError {
    OnnxError::Node {
        node: node.name.clone(),
        op: node.op_type.clone(),
        message,
    }
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The `i`-th input, which must be present.
fn arg<'a>(
    node: &NodeProto,
    args: &[Option<&'a Tensor>],
    i: usize,
) -> Result<&'a Tensor, OnnxError> {
    args.get(i)
        .copied()
        .flatten()
        .ok_or_else(|| node_error(node, format!("input {i} is missing")))
}

fn floats<'a>(node: &NodeProto, t: &'a Tensor) -> Result<&'a [f32], OnnxError> {
    t.as_f32()
        .ok_or_else(|| node_error(node, "expected a float tensor".into()))
}

fn ints<'a>(node: &NodeProto, t: &'a Tensor) -> Result<&'a [i64], OnnxError> {
    t.ints()
        .ok_or_else(|| node_error(node, "expected an integer tensor".into()))
}

fn eval_node(node: &NodeProto, args: &[Option<&Tensor>]) -> Result<Tensor, OnnxError> {
    let fail = |message: String| node_error(node, message);
    match node.op_type.as_str() {
        "Constant" => {
            let value = attribute(node, "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| fail("only `value` constants are supported".into()))?;
            Tensor::from_proto(value)
        }
        "Cast" => {
            let to = attribute(node, "to").map_or(0, |a| a.i as i32);
            let x = arg(node, args, 0)?;
            match (to, x) {
                (FLOAT, Tensor::F32 { .. }) | (INT64, Tensor::I64 { .. }) => Ok(x.clone()),
                (FLOAT, Tensor::I64 { shape, data }) => Ok(Tensor::F32 {
                    shape: shape.clone(),
                    data: data.iter().map(|&v| v as f32).collect(),
                }),
                (INT64, Tensor::F32 { shape, data }) => Ok(Tensor::I64 {
                    shape: shape.clone(),
                    data: data.iter().map(|&v| v as i64).collect(),
                }),
                _ => Err(fail(format!("cast to data type {to} is not supported"))),
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let a = arg(node, args, 0)?;
            let b = arg(node, args, 1)?;
            binary(node, a, b)
        }
        "Log" | "Exp" | "Relu" | "Sigmoid" => {
            let x = arg(node, args, 0)?;
            let data = floats(node, x)?;
            let f: fn(f32) -> f32 = match node.op_type.as_str() {
                "Log" => f32::ln,
                "Exp" => f32::exp,
                "Relu" => |v| v.max(0.0),
                _ => |v| 1.0 / (1.0 + (-v).exp()),
            };
            Ok(Tensor::F32 {
                shape: x.shape().to_vec(),
                data: data.iter().map(|&v| f(v)).collect(),
            })
        }
        "Shape" => {
            let x = arg(node, args, 0)?;
            Ok(Tensor::I64 {
                shape: vec![x.shape().len()],
                data: x.shape().iter().map(|&d| d as i64).collect(),
            })
        }
        "Unsqueeze" => {
            let x = arg(node, args, 0)?;
            let axes = ints(node, arg(node, args, 1)?)?;
            let mut shape = x.shape().to_vec();
            let rank = (shape.len() + axes.len()) as i64;
            let mut axes: Vec<usize> = axes
                .iter()
                .map(|&a| if a < 0 { a + rank } else { a })
                .map(|a| usize::try_from(a).map_err(|_| fail(format!("axis {a} out of range"))))
                .collect::<Result<_, _>>()?;
            axes.sort_unstable();
            for a in axes {
                if a > shape.len() {
                    return Err(fail(format!("axis {a} out of range")));
                }
                shape.insert(a, 1);
            }
            Ok(with_shape(x, shape))
        }
        "Concat" => {
            let axis = attribute(node, "axis").map_or(0, |a| a.i);
            let parts: Vec<&Tensor> = args.iter().flatten().copied().collect();
            concat(node, &parts, axis)
        }
        "Gather" => {
            let axis = attribute(node, "axis").map_or(0, |a| a.i);
            gather(node, arg(node, args, 0)?, arg(node, args, 1)?, axis)
        }
        "Slice" => slice(node, args),
        "Gemm" => gemm(node, args),
        "BatchNormalization" => batch_norm(node, args),
        other => Err(fail(format!("operator {other} is not supported"))),
    }
}

fn with_shape(x: &Tensor, shape: Vec<usize>) -> Tensor {
    match x {
        Tensor::F32 { data, .. } => Tensor::F32 {
            shape,
            data: data.clone(),
        },
        Tensor::I64 { data, .. } => Tensor::I64 {
            shape,
            data: data.clone(),
        },
    }
}

/// Numpy-style broadcast of two shapes.
fn broadcast_shape(node: &NodeProto, a: &[usize], b: &[usize]) -> Result<Vec<usize>, OnnxError> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        let offset = rank - s.len();
        if i < offset { 1 } else { s[i - offset] }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => Err(node_error(
                node,
                format!("shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"),
            )),
        })
        .collect()
}

/// For each element of `out`, the flat index into a tensor of `shape` broadcast to it.
fn broadcast_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let offset = out.len() - shape.len();
    let mut strides = vec![0usize; out.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        strides[i + offset] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    let count: usize = out.iter().product();
    let mut indices = Vec::with_capacity(count);
    let mut position = vec![0usize; out.len()];
    for _ in 0..count {
        indices.push(position.iter().zip(&strides).map(|(p, s)| p * s).sum());
        for d in (0..out.len()).rev() {
            position[d] += 1;
            if position[d] < out[d] {
                break;
            }
            position[d] = 0;
        }
    }
    indices
}

fn binary(node: &NodeProto, a: &Tensor, b: &Tensor) -> Result<Tensor, OnnxError> {
    let shape = broadcast_shape(node, a.shape(), b.shape())?;
    let ia = broadcast_indices(a.shape(), &shape);
    let ib = broadcast_indices(b.shape(), &shape);
    match (a, b) {
        (Tensor::F32 { data: x, .. }, Tensor::F32 { data: y, .. }) => {
            let f: fn(f32, f32) -> f32 = match node.op_type.as_str() {
                "Add" => |p, q| p + q,
                "Sub" => |p, q| p - q,
                "Mul" => |p, q| p * q,
                _ => |p, q| p / q,
            };
            Ok(Tensor::F32 {
                data: ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect(),
                shape,
            })
        }
        (Tensor::I64 { data: x, .. }, Tensor::I64 { data: y, .. }) => {
            let data = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| match node.op_type.as_str() {
                    "Add" => Ok(x[i].wrapping_add(y[j])),
                    "Sub" => Ok(x[i].wrapping_sub(y[j])),
                    "Mul" => Ok(x[i].wrapping_mul(y[j])),
                    _ => x[i]
                        .checked_div(y[j])
                        .ok_or_else(|| node_error(node, "integer division by zero".into())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::I64 { data, shape })
        }
        _ => Err(node_error(node, "mixed float and integer inputs".into())),
    }
}

fn normalize_axis(node: &NodeProto, axis: i64, rank: usize) -> Result<usize, OnnxError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| node_error(node, format!("axis {axis} out of range for rank {rank}")))
}

/// Splits a shape at `axis` into (outer count, axis length, inner count).
fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

fn concat(node: &NodeProto, parts: &[&Tensor], axis: i64) -> Result<Tensor, OnnxError> {
    let Some(first) = parts.first() else {
        return Err(node_error(node, "nothing to concatenate".into()));
    };
    let rank = first.shape().len();
    let axis = normalize_axis(node, axis, rank)?;
    let mut shape = first.shape().to_vec();
    shape[axis] = 0;
    for p in parts {
        let s = p.shape();
        if s.len() != rank
            || s.iter()
                .enumerate()
                .any(|(i, &d)| i != axis && d != first.shape()[i])
        {
            return Err(node_error(
                node,
                format!("cannot concatenate {s:?} with {:?}", first.shape()),
            ));
        }
        shape[axis] += s[axis];
    }
    let (outer, _, _) = split(&shape, axis);
    match first {
        Tensor::F32 { .. } => {
            let mut data = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for p in parts {
                    let (_, len, inner) = split(p.shape(), axis);
                    let d = floats(node, p)?;
                    data.extend_from_slice(&d[o * len * inner..(o + 1) * len * inner]);
                }
            }
            Ok(Tensor::F32 { shape, data })
        }
        Tensor::I64 { .. } => {
            let mut data = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for p in parts {
                    let (_, len, inner) = split(p.shape(), axis);
                    let d = ints(node, p)?;
                    data.extend_from_slice(&d[o * len * inner..(o + 1) * len * inner]);
                }
            }
            Ok(Tensor::I64 { shape, data })
        }
    }
}

fn gather(
    node: &NodeProto,
    data: &Tensor,
    indices: &Tensor,
    axis: i64,
) -> Result<Tensor, OnnxError> {
    let axis = normalize_axis(node, axis, data.shape().len())?;
    let (outer, len, inner) = split(data.shape(), axis);
    let idx = ints(node, indices)?
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < len)
                .ok_or_else(|| node_error(node, format!("index {i} out of range 0..{len}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut shape = data.shape()[..axis].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&data.shape()[axis + 1..]);
    fn take<T: Copy>(d: &[T], outer: usize, len: usize, inner: usize, idx: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in idx {
                let start = (o * len + i) * inner;
                out.extend_from_slice(&d[start..start + inner]);
            }
        }
        out
    }
    Ok(match data {
        Tensor::F32 { data, .. } => Tensor::F32 {
            data: take(data, outer, len, inner, &idx),
            shape,
        },
        Tensor::I64 { data, .. } => Tensor::I64 {
            data: take(data, outer, len, inner, &idx),
            shape,
        },
    })
}

/// `Slice` with starts, ends and optional axes (steps must be 1).
fn slice(node: &NodeProto, args: &[Option<&Tensor>]) -> Result<Tensor, OnnxError> {
    let x = arg(node, args, 0)?;
    let starts = ints(node, arg(node, args, 1)?)?;
    let ends = ints(node, arg(node, args, 2)?)?;
    let rank = x.shape().len();
    let axes: Vec<i64> = match args.get(3).copied().flatten() {
        Some(t) => ints(node, t)?.to_vec(),
        None => (0..starts.len() as i64).collect(),
    };
    if let Some(steps) = args.get(4).copied().flatten()
        && ints(node, steps)?.iter().any(|&s| s != 1)
    {
        return Err(node_error(node, "only step 1 is supported".into()));
    }
    let mut out = x.clone();
    for ((&start, &end), &axis) in starts.iter().zip(ends).zip(&axes) {
        let axis = normalize_axis(node, axis, rank)?;
        let len = out.shape()[axis] as i64;
        let clamp = |v: i64| {
            let v = if v < 0 { v + len } else { v };
            v.clamp(0, len) as usize
        };
        let (s, e) = (clamp(start), clamp(end).max(clamp(start)));
        let (outer, len, inner) = split(out.shape(), axis);
        let mut shape = out.shape().to_vec();
        shape[axis] = e - s;
        fn cut<T: Copy>(
            d: &[T],
            outer: usize,
            len: usize,
            inner: usize,
            s: usize,
            e: usize,
        ) -> Vec<T> {
            let mut v = Vec::with_capacity(outer * (e - s) * inner);
            for o in 0..outer {
                v.extend_from_slice(&d[(o * len + s) * inner..(o * len + e) * inner]);
            }
            v
        }
        out = match &out {
            Tensor::F32 { data, .. } => Tensor::F32 {
                data: cut(data, outer, len, inner, s, e),
                shape,
            },
            Tensor::I64 { data, .. } => Tensor::I64 {
                data: cut(data, outer, len, inner, s, e),
                shape,
            },
        };
    }
    Ok(out)
}

/// `Gemm`: alpha * A' B' + beta * C, with A' and B' optionally transposed.
fn gemm(node: &NodeProto, args: &[Option<&Tensor>]) -> Result<Tensor, OnnxError> {
    let a = arg(node, args, 0)?;
    let b = arg(node, args, 1)?;
    let alpha = attribute(node, "alpha").map_or(1.0, |x| x.f);
    let beta = attribute(node, "beta").map_or(1.0, |x| x.f);
    let trans_a = attribute(node, "transA").is_some_and(|x| x.i != 0);
    let trans_b = attribute(node, "transB").is_some_and(|x| x.i != 0);
    let (&[ar, ac], &[br, bc]) = (a.shape(), b.shape()) else {
        return Err(node_error(node, "A and B must be matrices".into()));
    };
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(node_error(
            node,
            format!("inner dimensions differ: {k} vs {k2}"),
        ));
    }
    let (av, bv) = (floats(node, a)?, floats(node, b)?);
    // Both operands as row-major [m,k] and [n,k], so each output is one contiguous dot product.
    let a_rows: Vec<f32> = if trans_a {
        (0..m)
            .flat_map(|i| (0..k).map(move |p| av[p * ac + i]))
            .collect()
    } else {
        av.to_vec()
    };
    let b_rows: Vec<f32> = if trans_b {
        bv.to_vec()
    } else {
        (0..n)
            .flat_map(|j| (0..k).map(move |p| bv[p * bc + j]))
            .collect()
    };
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let row = &a_rows[i * k..(i + 1) * k];
        for j in 0..n {
            out[i * n + j] = alpha * dot(row, &b_rows[j * k..(j + 1) * k]);
        }
    }
    if let Some(c) = args.get(2).copied().flatten() {
        let cv = floats(node, c)?;
        let shape = broadcast_shape(node, c.shape(), &[m, n])?;
        if shape != [m, n] {
            return Err(node_error(
                node,
                format!(
                    "C of shape {:?} does not broadcast to [{m}, {n}]",
                    c.shape()
                ),
            ));
        }
        for (o, ci) in out.iter_mut().zip(broadcast_indices(c.shape(), &[m, n])) {
            *o += beta * cv[ci];
        }
    }
    Ok(Tensor::F32 {
        shape: vec![m, n],
        data: out,
    })
}

/// A dot product with eight running sums (lets the compiler vectorise it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            sums[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut total: f32 = sums.iter().sum();
    for i in chunks * 8..a.len() {
        total += a[i] * b[i];
    }
    total
}

/// Inference-mode batch normalisation over axis 1.
fn batch_norm(node: &NodeProto, args: &[Option<&Tensor>]) -> Result<Tensor, OnnxError> {
    let x = arg(node, args, 0)?;
    let [scale, bias, mean, var] = [1, 2, 3, 4].map(|i| arg(node, args, i));
    let (scale, bias, mean, var) = (
        floats(node, scale?)?,
        floats(node, bias?)?,
        floats(node, mean?)?,
        floats(node, var?)?,
    );
    let epsilon = attribute(node, "epsilon").map_or(1e-5, |a| a.f);
    let shape = x.shape().to_vec();
    if shape.len() < 2 {
        return Err(node_error(node, "input must have a channel axis".into()));
    }
    let (outer, channels, inner) = split(&shape, 1);
    if [scale.len(), bias.len(), mean.len(), var.len()] != [channels; 4] {
        return Err(node_error(
            node,
            format!("parameters do not have {channels} channels"),
        ));
    }
    let data = floats(node, x)?;
    let mut out = Vec::with_capacity(data.len());
    for o in 0..outer {
        for c in 0..channels {
            let factor = scale[c] / (var[c] + epsilon).sqrt();
            for i in 0..inner {
                let v = data[(o * channels + c) * inner + i];
                out.push((v - mean[c]) * factor + bias[c]);
            }
        }
    }
    Ok(Tensor::F32 { shape, data: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::F32 {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    fn node(op: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: "n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn broadcasting_binary_ops_follow_numpy() {
        let a = f(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = f(&[3], &[10., 20., 30.]);
        let out = binary(&node("Add"), &a, &b).expect("add");
        assert_eq!(out, f(&[2, 3], &[11., 22., 33., 14., 25., 36.]));
        let s = f(&[], &[2.]);
        let out = binary(&node("Div"), &a, &s).expect("div");
        assert_eq!(out.as_f32().expect("f32")[5], 3.0);
        assert!(binary(&node("Add"), &a, &f(&[2], &[1., 2.])).is_err());
    }

    #[test]
    fn gemm_gather_slice_and_concat() {
        let mut g = node("Gemm");
        g.attribute.push(AttributeProto {
            name: "transB".into(),
            i: 1,
            ..Default::default()
        });
        let a = f(&[1, 2], &[1., 2.]);
        let b = f(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
        let c = f(&[3], &[0.5, 0.5, 0.5]);
        let out = gemm(&g, &[Some(&a), Some(&b), Some(&c)]).expect("gemm");
        assert_eq!(out, f(&[1, 3], &[1.5, 2.5, 3.5]));

        let emb = f(&[3, 2], &[0., 1., 10., 11., 20., 21.]);
        let idx = Tensor::I64 {
            shape: vec![2],
            data: vec![2, -3],
        };
        let out = gather(&node("Gather"), &emb, &idx, 0).expect("gather");
        assert_eq!(out, f(&[2, 2], &[20., 21., 0., 1.]));

        let x = f(&[1, 4], &[1., 2., 3., 4.]);
        let i = |v: i64| Tensor::I64 {
            shape: vec![1],
            data: vec![v],
        };
        let (s, e, ax) = (i(2), i(4), i(-1));
        let out = slice(&node("Slice"), &[Some(&x), Some(&s), Some(&e), Some(&ax)]).expect("slice");
        assert_eq!(out, f(&[1, 2], &[3., 4.]));

        let out = concat(&node("Concat"), &[&x, &out], 1).expect("concat");
        assert_eq!(out, f(&[1, 6], &[1., 2., 3., 4., 3., 4.]));
    }

    #[test]
    fn unknown_operators_and_garbage_are_errors() {
        let err = eval_node(&node("Conv"), &[]).expect_err("unsupported");
        assert!(
            err.to_string().contains("operator Conv is not supported"),
            "{err}"
        );
        assert!(Model::from_bytes(b"\xff\xff\xff").is_err());
    }
}
