//! The layer graph as an SVG picture (`lcjit ir MODEL --stage svg`), laid out by
//! layout-rs (Sugiyama-style layered layout: ranks, crossing reduction, placement).
//!
//! One box per node, top to bottom in data-flow order, with three lines: the layer name,
//! its Keras class and its output shape as Keras prints it (`(None, 55, 55, 16)`); one
//! arrow per graph edge, from producer to consumer, in the node's input order. Boxes are
//! sized from their text so labels never overlap, and filled by kind (inputs grey,
//! locally connected layers orange, merges blue, the rest white) so the layers this
//! project is about stand out. The output is deterministic: the same graph gives the
//! same bytes.

use super::{Graph, Op};
use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

/// Font size of the labels, in SVG user units (pixels).
const FONT: usize = 14;

/// The graph as a standalone SVG document.
pub fn graph_svg(g: &Graph) -> String {
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    let handles: Vec<_> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(id, n)| {
            let label = label(g, id);
            let look = StyleAttr::new(Color::fast("black"), 1, Some(fill(&n.op)), 6, FONT);
            let shape = ShapeKind::new_box(&label);
            vg.add_node(Element::create(
                shape,
                look,
                Orientation::TopToBottom,
                box_size(&label),
            ))
        })
        .collect();
    for (id, n) in g.nodes.iter().enumerate() {
        for &i in &n.inputs {
            vg.add_edge(Arrow::simple(""), handles[i], handles[id]);
        }
    }
    let mut svg = SVGWriter::new();
    vg.do_it(false, false, false, &mut svg);
    // layout-rs picks Times and grows the canvas by ten units per character of every
    // label, downwards, which leaves a blank tail under tall graphs; a sans-serif face
    // matches the box widths above, and the canvas is cut to the boxes.
    let text = svg.finalize().replace(
        "font-family: Times, serif",
        "font-family: DejaVu Sans, Arial, sans-serif",
    );
    fit_height(&sorted_styles(&text))
}

/// `svg` with the lines of its `<style>` block sorted: layout-rs keeps its font classes
/// in a hash map, whose order changes from run to run.
fn sorted_styles(svg: &str) -> String {
    let (Some(a), Some(b)) = (svg.find("<style>\n"), svg.find("</style>")) else {
        return svg.to_string();
    };
    let start = a + "<style>\n".len();
    if b < start {
        return svg.to_string();
    }
    let mut lines: Vec<&str> = svg[start..b].lines().collect();
    lines.sort_unstable();
    format!("{}{}\n{}", &svg[..start], lines.join("\n"), &svg[b..])
}

/// `svg` with its height (and view box) set to the lowest box's bottom plus a margin.
fn fit_height(svg: &str) -> String {
    let attr = |tag: &str, name: &str| -> Option<f64> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        tag[start..start + len].parse().ok()
    };
    let bottom = svg
        .split("<rect")
        .skip(1)
        .filter_map(|tag| Some(attr(tag, "y")? + attr(tag, "height")?))
        .fold(0f64, f64::max);
    let Some(head_end) = svg
        .find('>')
        .and_then(|i| svg[i + 1..].find('>').map(|j| i + 1 + j))
    else {
        return svg.to_string();
    };
    let head = &svg[..head_end];
    let (Some(width), Some(height)) = (attr(head, "width"), attr(head, "height")) else {
        return svg.to_string();
    };
    let new_height = (bottom + 30.0).min(height);
    let fixed = head
        .replace(
            &format!("height=\"{height}\""),
            &format!("height=\"{new_height}\""),
        )
        .replace(
            &format!("viewBox=\"0 0 {width} {height}\""),
            &format!("viewBox=\"0 0 {width} {new_height}\""),
        );
    format!("{fixed}{}", &svg[head_end..])
}

/// The three lines of a node's box.
fn label(g: &Graph, id: super::NodeId) -> String {
    let n = &g.nodes[id];
    let mut dims = vec!["None".to_string()];
    dims.extend(n.shape.iter().map(|d| d.to_string()));
    let class = n.op.kind_name();
    let marks = if g.outputs.contains(&id) {
        " (output)"
    } else {
        ""
    };
    format!("{}\n{class}{marks}\n({})", n.name, dims.join(", "))
}

/// A box that holds `label` with a margin: layout-rs draws the text centred but sizes
/// boxes only from what it is given, so the width follows the longest line (about 0.6
/// of the font size per character in a sans-serif face) and the height the line count.
fn box_size(label: &str) -> Point {
    let longest = label.lines().map(|l| l.chars().count()).max().unwrap_or(1);
    let lines = label.lines().count().max(1);
    Point::new(
        longest as f64 * FONT as f64 * 0.62 + 28.0,
        lines as f64 * FONT as f64 * 1.25 + 18.0,
    )
}

/// The fill colour of a node's box, by kind.
fn fill(op: &Op) -> Color {
    Color::new(match op {
        Op::Input => 0xe8e8e8ff,
        Op::LocallyConnected(_) => 0xffd9a8ff,
        Op::Merge(_) | Op::Concatenate { .. } => 0xcfe3ffff,
        _ => 0xffffffff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Activation, Dense, Initializer, WeightOptions};

    #[test]
    fn every_node_and_edge_is_drawn() {
        let mut g = Graph::new("two");
        let x = g.add_input("x", vec![3]).expect("x");
        let op = |units| {
            Op::Dense(Dense {
                units,
                activation: Activation::Linear,
                use_bias: true,
                kernel_initializer: Initializer::Zeros,
                bias_initializer: Initializer::Zeros,
                options: WeightOptions::default(),
            })
        };
        let a = g.add("dense_a", op(4), &[x]).expect("a");
        let b = g.add("dense_b", op(2), &[a]).expect("b");
        g.outputs = vec![b];
        let svg = graph_svg(&g);
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
        for text in [
            "dense_a",
            "dense_b",
            "Dense (output)",
            "(None, 4)",
            "(None, 2)",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert_eq!(svg.matches("<path").count(), 2, "one arrow per edge");
        assert_eq!(svg, graph_svg(&g), "deterministic");
    }
}
