//! Deterministic text printer of the graph IR, Graphviz DOT output, and the Keras-style
//! summary table.
//!
//! The text form is stable (golden files in `ir/` compare it byte for byte): one line per
//! node in topological order, attributes in a fixed order, floats printed with Rust's
//! shortest round-trip formatting, followed by one indented line per parameter.

use super::ops::*;
use super::Graph;
use std::fmt::Write as _;

fn dims(v: &[usize]) -> String {
    let parts: Vec<String> = v.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Text of an activation, e.g. `relu`, `leaky_relu(alpha=0.1)`.
pub fn activation_text(a: &Activation) -> String {
    match a {
        Activation::Linear => "linear".into(),
        Activation::Relu {
            alpha,
            max_value,
            threshold,
        } => {
            if *alpha == 0.0 && max_value.is_none() && *threshold == 0.0 {
                "relu".into()
            } else {
                format!("relu(alpha={alpha:?}, max_value={max_value:?}, threshold={threshold:?})")
            }
        }
        Activation::Sigmoid => "sigmoid".into(),
        Activation::Tanh => "tanh".into(),
        Activation::Softmax { axis } => format!("softmax(axis={axis})"),
        Activation::LogSoftmax => "log_softmax".into(),
        Activation::Elu { alpha } => format!("elu(alpha={alpha:?})"),
        Activation::Selu => "selu".into(),
        Activation::Softplus => "softplus".into(),
        Activation::Softsign => "softsign".into(),
        Activation::HardSigmoid => "hard_sigmoid".into(),
        Activation::Exponential => "exponential".into(),
        Activation::Swish => "swish".into(),
        Activation::Gelu { approximate } => format!("gelu(approximate={approximate})"),
        Activation::Relu6 => "relu6".into(),
        Activation::Mish => "mish".into(),
        Activation::LeakyRelu { alpha } => format!("leaky_relu(alpha={alpha:?})"),
    }
}

/// The attributes of an op as `key=value` pairs, in a fixed order.
pub fn op_attrs(op: &Op) -> String {
    match op {
        Op::Input => String::new(),
        Op::LocallyConnected(l) => format!(
            "filters={} kernel={} strides={} dilation={} padding={} format={} activation={} bias={} impl={}",
            l.filters,
            dims(&l.kernel),
            dims(&l.strides),
            dims(&l.dilation),
            l.padding.keras_name(),
            l.data_format.keras_name(),
            activation_text(&l.activation),
            l.use_bias,
            l.implementation
        ),
        Op::Dense(d) => format!(
            "units={} activation={} bias={}",
            d.units,
            activation_text(&d.activation),
            d.use_bias
        ),
        Op::Conv(c) => format!(
            "filters={} kernel={} strides={} dilation={} padding={} format={} groups={} activation={} bias={}",
            c.filters,
            dims(&c.kernel),
            dims(&c.strides),
            dims(&c.dilation),
            c.padding.keras_name(),
            c.data_format.keras_name(),
            c.groups,
            activation_text(&c.activation),
            c.use_bias
        ),
        Op::Pool(p) => format!(
            "pool={} strides={} padding={} format={}",
            dims(&p.pool),
            dims(&p.strides),
            p.padding.keras_name(),
            p.data_format.keras_name()
        ),
        Op::GlobalPool {
            data_format,
            keepdims,
            ..
        } => format!("format={} keepdims={keepdims}", data_format.keras_name()),
        Op::ZeroPadding {
            pads, data_format, ..
        } => format!("pads={pads:?} format={}", data_format.keras_name()),
        Op::Cropping {
            crops, data_format, ..
        } => format!("crops={crops:?} format={}", data_format.keras_name()),
        Op::Flatten { data_format } => format!("format={}", data_format.keras_name()),
        Op::Reshape { target } => format!("target={target:?}"),
        Op::Permute { dims } => format!("dims={dims:?}"),
        Op::Dropout { rate, .. } => format!("rate={rate:?}"),
        Op::BatchNorm(b) => format!(
            "axis={} epsilon={:?} momentum={:?} center={} scale={}",
            b.axis, b.epsilon, b.momentum, b.center, b.scale
        ),
        Op::Activation(a) => format!("activation={}", activation_text(a)),
        Op::Merge(_) => String::new(),
        Op::Concatenate { axis } => format!("axis={axis}"),
    }
}

/// The graph as deterministic text.
pub fn graph_text(g: &Graph) -> String {
    let mut s = String::new();
    let ins: Vec<String> = g.inputs.iter().map(|&i| format!("%{i}")).collect();
    let outs: Vec<String> = g.outputs.iter().map(|&i| format!("%{i}")).collect();
    let _ = writeln!(
        s,
        "graph {} (inputs: {}) -> ({})",
        g.name,
        ins.join(", "),
        outs.join(", ")
    );
    for (id, n) in g.nodes.iter().enumerate() {
        let args: Vec<String> = n.inputs.iter().map(|&i| format!("%{i}")).collect();
        let attrs = op_attrs(&n.op);
        let sep = if attrs.is_empty() { "" } else { " " };
        let _ = writeln!(
            s,
            "  %{id} = {}({}){sep}{attrs} -> f32{}  # {}",
            n.op.kind_name(),
            args.join(", "),
            dims(&n.shape),
            n.name
        );
        for &p in &n.params {
            let spec = &g.params[p];
            let layout = if spec.keras_shape == spec.shape {
                String::new()
            } else {
                format!(" file f32{}", dims(&spec.keras_shape))
            };
            let _ = writeln!(
                s,
                "      param {}/{}: f32{}{layout}{}",
                n.name,
                spec.name,
                dims(&spec.shape),
                if spec.trainable { "" } else { " non-trainable" }
            );
        }
    }
    s
}

/// The graph in Graphviz DOT.
pub fn graph_dot(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", g.name.replace('"', "'"));
    let _ = writeln!(
        s,
        "  rankdir=TB;\n  node [shape=record, fontname=\"monospace\"];"
    );
    for (id, n) in g.nodes.iter().enumerate() {
        let _ = writeln!(
            s,
            "  n{id} [label=\"{{{}|{}|{}}}\"];",
            n.name.replace('"', "'"),
            n.op.kind_name(),
            dims(&n.shape)
        );
        for &i in &n.inputs {
            let _ = writeln!(s, "  n{i} -> n{id};");
        }
    }
    s.push_str("}\n");
    s
}

/// Formats an integer with thousands separators, as Keras's summary does.
pub fn with_commas(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A Keras-style summary: one row per layer with its output shape and parameter count
/// (counted in the file layout, as Keras does), then the totals.
pub fn summary(g: &Graph) -> String {
    let mut rows = Vec::new();
    let (mut total, mut trainable) = (0usize, 0usize);
    for n in &g.nodes {
        let mut shape = vec!["None".to_string()];
        shape.extend(n.shape.iter().map(|d| d.to_string()));
        let count: usize = n
            .params
            .iter()
            .map(|&p| g.params[p].keras_shape.iter().product::<usize>())
            .sum();
        for &p in &n.params {
            let c: usize = g.params[p].keras_shape.iter().product();
            total += c;
            if g.params[p].trainable {
                trainable += c;
            }
        }
        rows.push((
            format!("{} ({})", n.name, n.op.kind_name()),
            format!("({})", shape.join(", ")),
            with_commas(count),
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(12) + 2;
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(12) + 2;
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(7);
    let width = w0 + w1 + w2;
    let mut s = String::new();
    let _ = writeln!(s, "Model: \"{}\"", g.name);
    let _ = writeln!(s, "{}", "_".repeat(width));
    let _ = writeln!(
        s,
        "{:<w0$}{:<w1$}{:>w2$}",
        "Layer (type)", "Output Shape", "Param #"
    );
    let _ = writeln!(s, "{}", "=".repeat(width));
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(s, "{:<w0$}{:<w1$}{:>w2$}", r.0, r.1, r.2);
        if i + 1 < rows.len() {
            let _ = writeln!(s, "{}", "_".repeat(width));
        }
    }
    let _ = writeln!(s, "{}", "=".repeat(width));
    let _ = writeln!(s, "Total params: {}", with_commas(total));
    let _ = writeln!(s, "Trainable params: {}", with_commas(trainable));
    let _ = writeln!(
        s,
        "Non-trainable params: {}",
        with_commas(total - trainable)
    );
    let _ = writeln!(s, "{}", "_".repeat(width));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas() {
        assert_eq!(with_commas(0), "0");
        assert_eq!(with_commas(999), "999");
        assert_eq!(with_commas(1000), "1,000");
        assert_eq!(with_commas(137774071), "137,774,071");
    }
}
