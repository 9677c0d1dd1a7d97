//! The graph IR back to a Keras model configuration: what tf-keras 2.x `model.to_json()`
//! writes (keras-lc-semantics §4.1, §4.4).
//!
//! The output is the tf-keras 2.21 dialect whatever dialect the model was read from: a
//! `Sequential` model (with its `InputLayer` first) when the graph is a plain chain from
//! one input to one output, otherwise a `Functional` one with `inbound_nodes`. Every
//! layer, initializer, regularizer and constraint is written as an object dict with
//! `module`, `class_name`, `config` and `registered_name`, so tf-keras loads the file and
//! [`super::parse_model_value`] reads it back to an equal graph.
//!
//! lcjit extensions use the keys the front end reads: `LocallyConnected3D` is written as
//! that class, and `dilation_rate` is written on locally connected layers only when it is
//! not all ones (tf-keras rejects the key). Two values have no tf-keras spelling and are
//! written as their nearest equivalent: the uncorrected truncated normal of Keras 2.0/2.1
//! initializers (written as `truncated_normal`; only initialization differs) and the
//! tanh-approximated GELU, which no configuration the front end reads can produce
//! (written as the exact `gelu`; [`crate::Model::save`] refuses such a graph).

use serde_json::{json, Map, Value};

use crate::graph::{
    Activation, BatchNorm, Constraint, Conv, DataFormat, Dense, Distribution, DtypePolicy, FanMode,
    Graph, Initializer, LocallyConnected, Node, Op, Pool, Regularizer, WeightOptions,
};

/// `keras_version` of the written envelope.
pub const KERAS_VERSION: &str = "2.21.0";

/// The model config in tf-keras 2.x's `model.to_json()` format: `{"class_name":
/// "Sequential"|"Functional", "config": …, "keras_version": "2.21.0", "backend":
/// "tensorflow"}` (Sequential when the graph is a chain with one input, else
/// Functional). Layer names, every option, initializers, regularizers, constraints,
/// `implementation` and `data_format` are kept; lcjit extensions (LocallyConnected3D,
/// `dilation_rate` on LC) use the keys the front end reads.
pub fn to_keras_json(graph: &Graph) -> Value {
    let (class, config) = if is_chain(graph) {
        ("Sequential", sequential_config(graph))
    } else {
        ("Functional", functional_config(graph))
    };
    json!({
        "class_name": class,
        "config": config,
        "keras_version": KERAS_VERSION,
        "backend": "tensorflow",
    })
}

/// Whether the graph is a chain that `Sequential` can express: node 0 is the only input,
/// every other node takes exactly the previous node, the last node is the only output,
/// and no node is a merge (which Keras calls with a list of tensors).
fn is_chain(graph: &Graph) -> bool {
    let n = graph.nodes.len();
    n >= 2
        && graph.inputs == [0]
        && graph.outputs == [n - 1]
        && graph.nodes.iter().enumerate().skip(1).all(|(i, node)| {
            node.inputs == [i - 1] && !matches!(node.op, Op::Merge(_) | Op::Concatenate { .. })
        })
}

/// `[null, dims…]`.
fn batch_shape(shape: &[usize]) -> Value {
    let mut v = vec![Value::Null];
    v.extend(shape.iter().map(|&d| json!(d)));
    Value::Array(v)
}

/// An `f32` as the JSON number with the shortest decimal that reads back to it.
fn num(x: f32) -> Value {
    // `Display` of an f32 is the shortest decimal that round-trips through f32; reading
    // it as f64 and casting back gives the same f32.
    let f: f64 = x.to_string().parse().unwrap_or(f64::from(x));
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A tf-keras object dict.
fn object(module: &str, class: &str, config: Value) -> Value {
    json!({
        "module": module,
        "class_name": class,
        "config": config,
        "registered_name": null,
    })
}

fn data_format(f: DataFormat) -> Value {
    json!(f.keras_name())
}

fn initializer(init: &Initializer) -> Value {
    let obj = |class: &str, config: Value| object("keras.initializers", class, config);
    match *init {
        Initializer::Zeros => obj("Zeros", json!({})),
        Initializer::Ones => obj("Ones", json!({})),
        Initializer::Constant(v) => obj("Constant", json!({ "value": num(v) })),
        Initializer::RandomNormal { mean, stddev } => obj(
            "RandomNormal",
            json!({"mean": num(mean), "stddev": num(stddev), "seed": null}),
        ),
        Initializer::RandomUniform { minval, maxval } => obj(
            "RandomUniform",
            json!({"minval": num(minval), "maxval": num(maxval), "seed": null}),
        ),
        Initializer::TruncatedNormal { mean, stddev } => obj(
            "TruncatedNormal",
            json!({"mean": num(mean), "stddev": num(stddev), "seed": null}),
        ),
        Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
        } => {
            use Distribution as D;
            use FanMode as M;
            let named = match (mode, distribution) {
                (M::FanAvg, D::Uniform) if scale == 1.0 => Some("GlorotUniform"),
                (M::FanAvg, D::TruncatedNormal) if scale == 1.0 => Some("GlorotNormal"),
                (M::FanIn, D::Uniform) if scale == 2.0 => Some("HeUniform"),
                (M::FanIn, D::TruncatedNormal) if scale == 2.0 => Some("HeNormal"),
                (M::FanIn, D::Uniform) if scale == 1.0 => Some("LecunUniform"),
                (M::FanIn, D::TruncatedNormal) if scale == 1.0 => Some("LecunNormal"),
                _ => None,
            };
            if let Some(class) = named {
                return obj(class, json!({ "seed": null }));
            }
            let mode = match mode {
                M::FanIn => "fan_in",
                M::FanOut => "fan_out",
                M::FanAvg => "fan_avg",
            };
            let distribution = match distribution {
                D::TruncatedNormal | D::TruncatedNormalUncorrected => "truncated_normal",
                D::UntruncatedNormal => "untruncated_normal",
                D::Uniform => "uniform",
            };
            obj(
                "VarianceScaling",
                json!({"scale": num(scale), "mode": mode, "distribution": distribution, "seed": null}),
            )
        }
        Initializer::Orthogonal { gain } => {
            obj("Orthogonal", json!({"gain": num(gain), "seed": null}))
        }
        Initializer::Identity { gain } => obj("Identity", json!({ "gain": num(gain) })),
    }
}

fn regularizer(r: Option<Regularizer>) -> Value {
    let Some(r) = r else { return Value::Null };
    let obj = |class: &str, config: Value| object("keras.regularizers", class, config);
    if r.l2 == 0.0 && r.l1 != 0.0 {
        obj("L1", json!({ "l1": num(r.l1) }))
    } else if r.l1 == 0.0 && r.l2 != 0.0 {
        obj("L2", json!({ "l2": num(r.l2) }))
    } else {
        obj("L1L2", json!({"l1": num(r.l1), "l2": num(r.l2)}))
    }
}

/// A constraint axis list: a bare integer when there is one axis, as Keras writes it.
fn axes(axis: &[i64]) -> Value {
    match axis {
        [a] => json!(a),
        _ => json!(axis),
    }
}

fn constraint(c: Option<&Constraint>) -> Value {
    let Some(c) = c else { return Value::Null };
    let obj = |class: &str, config: Value| object("keras.constraints", class, config);
    match c {
        Constraint::MaxNorm { max_value, axis } => obj(
            "MaxNorm",
            json!({"max_value": num(*max_value), "axis": axes(axis)}),
        ),
        Constraint::NonNeg => obj("NonNeg", json!({})),
        Constraint::UnitNorm { axis } => obj("UnitNorm", json!({ "axis": axes(axis) })),
        Constraint::MinMaxNorm {
            min_value,
            max_value,
            rate,
            axis,
        } => obj(
            "MinMaxNorm",
            json!({"min_value": num(*min_value), "max_value": num(*max_value),
                   "rate": num(*rate), "axis": axes(axis)}),
        ),
        Constraint::Radial => obj("RadialConstraint", json!({})),
    }
}

/// The activation-layer form of an activation that a function name cannot express
/// (`ReLU` with options, `LeakyReLU`, `ELU` with a non-default alpha), as
/// `(class, config)`.
fn activation_layer_form(a: &Activation) -> Option<(&'static str, Value)> {
    match *a {
        Activation::Relu {
            alpha,
            max_value,
            threshold,
        } if alpha != 0.0 || max_value.is_some() || threshold != 0.0 => Some((
            "ReLU",
            json!({"max_value": max_value.map_or(Value::Null, num),
                   "negative_slope": num(alpha), "threshold": num(threshold)}),
        )),
        Activation::LeakyRelu { alpha } => Some(("LeakyReLU", json!({ "alpha": num(alpha) }))),
        Activation::Elu { alpha } if alpha != 1.0 => Some(("ELU", json!({ "alpha": num(alpha) }))),
        _ => None,
    }
}

/// The Keras function name of an activation.
fn activation_name(a: &Activation) -> &'static str {
    match a {
        Activation::Linear => "linear",
        Activation::Relu { .. } => "relu",
        Activation::Sigmoid => "sigmoid",
        Activation::Tanh => "tanh",
        Activation::Softmax { .. } => "softmax",
        Activation::LogSoftmax => "log_softmax",
        Activation::Elu { .. } => "elu",
        Activation::Selu => "selu",
        Activation::Softplus => "softplus",
        Activation::Softsign => "softsign",
        Activation::HardSigmoid => "hard_sigmoid",
        Activation::Exponential => "exponential",
        Activation::Swish => "swish",
        Activation::Gelu { .. } => "gelu",
        Activation::Relu6 => "relu6",
        Activation::Mish => "mish",
        Activation::LeakyRelu { .. } => "leaky_relu",
    }
}

/// A layer's `activation` value: a function name, or a nested layer object for the
/// activations with options.
fn activation(a: &Activation) -> Value {
    match activation_layer_form(a) {
        Some((class, config)) => object("keras.layers", class, config),
        None => json!(activation_name(a)),
    }
}

/// `name`, `trainable` and `dtype`, the keys every layer config starts with. The dtype
/// policy is written as it was read: a name, or tf-keras 2.21's `Policy` object.
fn base(name: &str, policy: DtypePolicy) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("trainable".into(), json!(true));
    let dtype = if policy.as_object {
        json!({
            "module": "keras.mixed_precision",
            "class_name": "Policy",
            "config": {"name": policy.name()},
            "registered_name": null,
        })
    } else {
        json!(policy.name())
    };
    m.insert("dtype".into(), dtype);
    m
}

/// Appends `pairs` to `m`.
fn extend(mut m: Map<String, Value>, pairs: Value) -> Map<String, Value> {
    if let Value::Object(p) = pairs {
        m.extend(p);
    }
    m
}

/// Kernel/bias initializers, regularizers and constraints (Dense, Conv, LC).
fn weight_keys(kernel: &Initializer, bias: &Initializer, o: &WeightOptions) -> Value {
    json!({
        "kernel_initializer": initializer(kernel),
        "bias_initializer": initializer(bias),
        "kernel_regularizer": regularizer(o.kernel_regularizer),
        "bias_regularizer": regularizer(o.bias_regularizer),
        "activity_regularizer": regularizer(o.activity_regularizer),
        "kernel_constraint": constraint(o.kernel_constraint.as_ref()),
        "bias_constraint": constraint(o.bias_constraint.as_ref()),
    })
}

fn locally_connected(m: Map<String, Value>, l: &LocallyConnected) -> Map<String, Value> {
    let mut m = extend(
        m,
        json!({
            "filters": l.filters,
            "kernel_size": l.kernel,
            "strides": l.strides,
            "padding": l.padding.keras_name(),
            "data_format": data_format(l.data_format),
            "activation": activation(&l.activation),
            "use_bias": l.use_bias,
        }),
    );
    if l.dilation.iter().any(|&d| d != 1) {
        m.insert("dilation_rate".into(), json!(l.dilation));
    }
    m = extend(
        m,
        weight_keys(&l.kernel_initializer, &l.bias_initializer, &l.options),
    );
    m.insert("implementation".into(), json!(l.implementation));
    m
}

fn dense(m: Map<String, Value>, d: &Dense) -> Map<String, Value> {
    let m = extend(
        m,
        json!({
            "units": d.units,
            "activation": activation(&d.activation),
            "use_bias": d.use_bias,
        }),
    );
    extend(
        m,
        weight_keys(&d.kernel_initializer, &d.bias_initializer, &d.options),
    )
}

fn conv(m: Map<String, Value>, c: &Conv) -> Map<String, Value> {
    let m = extend(
        m,
        json!({
            "filters": c.filters,
            "kernel_size": c.kernel,
            "strides": c.strides,
            "padding": c.padding.keras_name(),
            "data_format": data_format(c.data_format),
            "dilation_rate": c.dilation,
            "groups": c.groups,
            "activation": activation(&c.activation),
            "use_bias": c.use_bias,
        }),
    );
    extend(
        m,
        weight_keys(&c.kernel_initializer, &c.bias_initializer, &c.options),
    )
}

fn pool(m: Map<String, Value>, p: &Pool) -> Map<String, Value> {
    extend(
        m,
        json!({
            "pool_size": p.pool,
            "padding": p.padding.keras_name(),
            "strides": p.strides,
            "data_format": data_format(p.data_format),
        }),
    )
}

fn batch_norm(m: Map<String, Value>, b: &BatchNorm) -> Map<String, Value> {
    let o = &b.options;
    extend(
        m,
        json!({
            // Keras counts the batch axis.
            "axis": b.axis + 1,
            "momentum": num(b.momentum),
            "epsilon": num(b.epsilon),
            "center": b.center,
            "scale": b.scale,
            "beta_initializer": initializer(&b.initializers[1]),
            "gamma_initializer": initializer(&b.initializers[0]),
            "moving_mean_initializer": initializer(&b.initializers[2]),
            "moving_variance_initializer": initializer(&b.initializers[3]),
            "beta_regularizer": regularizer(o.bias_regularizer),
            "gamma_regularizer": regularizer(o.kernel_regularizer),
            "beta_constraint": constraint(o.bias_constraint.as_ref()),
            "gamma_constraint": constraint(o.kernel_constraint.as_ref()),
        }),
    )
}

/// `(before, after)` pairs as Keras writes them: `[a, b]` for 1D, `[[a, b], [c, d]]` else.
fn pairs(rank: usize, p: &[(usize, usize)]) -> Value {
    let list: Vec<Value> = p.iter().map(|&(a, b)| json!([a, b])).collect();
    match (rank, list.as_slice()) {
        (1, [one]) => one.clone(),
        _ => Value::Array(list),
    }
}

/// The Keras class name and layer config of a non-input node.
fn layer(node: &Node) -> (String, Map<String, Value>) {
    let m = base(&node.name, node.policy);
    let class = node.op.kind_name();
    let config = match &node.op {
        Op::Input => m,
        Op::LocallyConnected(l) => locally_connected(m, l),
        Op::Dense(d) => dense(m, d),
        Op::Conv(c) => conv(m, c),
        Op::Pool(p) => pool(m, p),
        Op::GlobalPool {
            data_format: f,
            keepdims,
            ..
        } => extend(
            m,
            json!({"data_format": data_format(*f), "keepdims": keepdims}),
        ),
        Op::ZeroPadding {
            rank,
            pads,
            data_format: f,
        } => {
            let mut m = extend(m, json!({ "padding": pairs(*rank, pads) }));
            if *rank > 1 {
                m.insert("data_format".into(), data_format(*f));
            }
            m
        }
        Op::Cropping {
            rank,
            crops,
            data_format: f,
        } => {
            let mut m = extend(m, json!({ "cropping": pairs(*rank, crops) }));
            if *rank > 1 {
                m.insert("data_format".into(), data_format(*f));
            }
            m
        }
        Op::Flatten { data_format: f } => extend(m, json!({ "data_format": data_format(*f) })),
        Op::Reshape { target } => extend(m, json!({ "target_shape": target })),
        Op::Permute { dims } => extend(m, json!({ "dims": dims })),
        Op::Dropout {
            rate,
            spatial,
            data_format: f,
        } => {
            let mut m = extend(m, json!({ "rate": num(*rate) }));
            match spatial {
                None => {
                    m.insert("noise_shape".into(), Value::Null);
                    m.insert("seed".into(), Value::Null);
                }
                Some(2) => {
                    m.insert("data_format".into(), data_format(*f));
                }
                Some(_) => {}
            }
            m
        }
        Op::BatchNorm(b) => batch_norm(m, b),
        Op::Activation(a) => return activation_layer(m, a),
        Op::Merge(_) => m,
        Op::Concatenate { axis } => extend(m, json!({ "axis": axis + 1 })),
    };
    (class, config)
}

/// An activation node: `Activation("name")`, or the layer class (`ReLU`, `LeakyReLU`,
/// `ELU`, `Softmax`) that carries its options. A `Softmax` layer's axis is stored
/// resolved to a per-sample axis; Keras counts the batch axis.
fn activation_layer(m: Map<String, Value>, a: &Activation) -> (String, Map<String, Value>) {
    if let Activation::Softmax { axis } = *a {
        if axis >= 0 {
            return ("Softmax".into(), extend(m, json!({ "axis": axis + 1 })));
        }
    }
    match activation_layer_form(a) {
        Some((class, config)) => (class.into(), extend(m, config)),
        None => (
            "Activation".into(),
            extend(m, json!({ "activation": activation_name(a) })),
        ),
    }
}

/// The Keras class a node is written as (activation nodes may become `ReLU`,
/// `LeakyReLU`, `ELU` or `Softmax` layers; see [`to_keras_json`]).
pub fn layer_class(node: &Node) -> String {
    match node.op {
        Op::Input => "InputLayer".into(),
        _ => layer(node).0,
    }
}

/// An `InputLayer` config.
fn input_config(node: &Node) -> Value {
    json!({
        "batch_input_shape": batch_shape(&node.shape),
        "dtype": "float32",
        "sparse": false,
        "ragged": false,
        "name": node.name,
        "optional": false,
    })
}

/// One entry of a model's `layers` list (without Functional's `name`/`inbound_nodes`).
fn layer_entry(graph: &Graph, node: &Node) -> Map<String, Value> {
    let (class, config) = match node.op {
        Op::Input => ("InputLayer".to_string(), input_config(node)),
        _ => {
            let (class, mut config) = layer(node);
            let id = graph.nodes.iter().position(|n| std::ptr::eq(n, node));
            if id.is_some_and(|id| graph.is_frozen(id)) {
                config.insert("trainable".into(), json!(false));
            }
            (class, Value::Object(config))
        }
    };
    let mut entry = Map::new();
    entry.insert("module".into(), json!("keras.layers"));
    entry.insert("class_name".into(), json!(class));
    entry.insert("config".into(), config);
    entry.insert("registered_name".into(), Value::Null);
    if !node.inputs.is_empty() {
        let shapes: Vec<Value> = node
            .inputs
            .iter()
            .filter_map(|&i| graph.nodes.get(i))
            .map(|n| batch_shape(&n.shape))
            .collect();
        let input_shape = match (&node.op, shapes.as_slice()) {
            (Op::Merge(_) | Op::Concatenate { .. }, _) => Value::Array(shapes),
            (_, [one]) => one.clone(),
            _ => Value::Array(shapes),
        };
        entry.insert("build_config".into(), json!({ "input_shape": input_shape }));
    }
    entry
}

fn sequential_config(graph: &Graph) -> Value {
    let layers: Vec<Value> = graph
        .nodes
        .iter()
        .map(|n| Value::Object(layer_entry(graph, n)))
        .collect();
    json!({ "name": graph.name, "layers": layers })
}

/// `[name, 0, 0]` references to `ids`.
fn refs(graph: &Graph, ids: &[usize]) -> Value {
    Value::Array(
        ids.iter()
            .filter_map(|&i| graph.nodes.get(i))
            .map(|n| json!([n.name, 0, 0]))
            .collect(),
    )
}

fn functional_config(graph: &Graph) -> Value {
    let layers: Vec<Value> = graph
        .nodes
        .iter()
        .map(|n| {
            let mut e = layer_entry(graph, n);
            e.insert("name".into(), json!(n.name));
            let inbound: Vec<Value> = n
                .inputs
                .iter()
                .filter_map(|&i| graph.nodes.get(i))
                .map(|p| json!([p.name, 0, 0, {}]))
                .collect();
            let nodes = if inbound.is_empty() {
                json!([])
            } else {
                json!([inbound])
            };
            e.insert("inbound_nodes".into(), nodes);
            Value::Object(e)
        })
        .collect();
    json!({
        "name": graph.name,
        "trainable": true,
        "layers": layers,
        "input_layers": refs(graph, &graph.inputs),
        "output_layers": refs(graph, &graph.outputs),
    })
}
