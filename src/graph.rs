//! `sensorgate graph`: a pipeline's topology as Graphviz DOT or a Mermaid flowchart. Sources on the
//! left, one node per flow with its stages in order, sinks on the right; a flow's dead-letter sink
//! is joined by a dashed edge.

use std::fmt::Write as _;

use crate::config::{PipelineConfig, StageConfig};
use crate::stages::decode::{Codec, Output};

/// The output notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Dot,
    Mermaid,
}

/// A stage as the graph shows it: its type and what sets it apart.
fn stage_label(stage: &StageConfig) -> String {
    match stage {
        StageConfig::Decode(d) => {
            let codec = match d.codec {
                Codec::Efento => "efento",
                Codec::Esp3 => "esp3",
                Codec::Plugin => "plugin",
                Codec::Json => "json",
            };
            match d.output {
                Output::Documents => format!("decode {codec}"),
                Output::Raw => format!("decode {codec} (raw out)"),
            }
        }
        StageConfig::DecodePlugin(p) => format!("decode {}", p.plugin),
        StageConfig::Dedupe(d) => format!("dedupe {}", d.key),
        StageConfig::Enrich(_) => "enrich".to_string(),
        StageConfig::Validate(_) => "validate".to_string(),
    }
}

/// The lines of a flow's node: its name, then its stages.
fn flow_lines(name: &str, stages: &[StageConfig]) -> Vec<String> {
    let mut lines = vec![format!("flow {name}")];
    lines.extend(stages.iter().map(stage_label));
    lines
}

/// Node ids safe in both notations.
fn id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}_{clean}_{:x}", fnv(name))
}

/// A short hash keeps ids distinct when cleaning makes two names equal (`a-b` and `a_b`).
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Mermaid labels are quoted; a quote inside one is written as an entity.
fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// What a node is: it decides its shape.
#[derive(Clone, Copy)]
enum Node {
    Source,
    Flow,
    Sink,
}

/// Renders `config` in `format`.
pub fn render(config: &PipelineConfig, format: Format) -> String {
    // Nodes as (kind, id, label lines), edges as (from, to, dead letter?).
    let mut nodes: Vec<(Node, String, Vec<String>)> = Vec::new();
    for (name, source) in &config.sources {
        let lines = vec![name.clone(), source.kind.type_name().to_string()];
        nodes.push((Node::Source, id("source", name), lines));
    }
    for flow in &config.flows {
        let lines = flow_lines(&flow.name, &flow.stages);
        nodes.push((Node::Flow, id("flow", &flow.name), lines));
    }
    for (name, sink) in &config.sinks {
        let lines = vec![name.clone(), sink.kind.type_name().to_string()];
        nodes.push((Node::Sink, id("sink", name), lines));
    }
    let mut edges: Vec<(String, String, bool)> = Vec::new();
    for flow in &config.flows {
        let f = id("flow", &flow.name);
        edges.extend(
            flow.from
                .iter()
                .map(|s| (id("source", s), f.clone(), false)),
        );
        edges.extend(flow.to.iter().map(|s| (f.clone(), id("sink", s), false)));
        if let Some(dl) = &flow.dead_letter {
            edges.push((f.clone(), id("sink", dl), true));
        }
    }

    let mut out = String::new();
    match format {
        Format::Dot => {
            out.push_str("digraph sensorgate {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
            for (node, id, lines) in &nodes {
                let shape = match node {
                    Node::Source => "shape=invhouse",
                    Node::Flow => "shape=box, style=rounded",
                    Node::Sink => "shape=cylinder",
                };
                let label: Vec<String> = lines.iter().map(|l| dot_text(l)).collect();
                let _ = writeln!(out, "  {id} [{shape}, label=\"{}\"];", label.join("\\n"));
            }
            for (from, to, dead) in &edges {
                let style = if *dead {
                    " [style=dashed, label=\"dead letter\"]"
                } else {
                    ""
                };
                let _ = writeln!(out, "  {from} -> {to}{style};");
            }
            out.push_str("}\n");
        }
        Format::Mermaid => {
            out.push_str("flowchart LR\n");
            for (node, id, lines) in &nodes {
                let label: Vec<String> = lines.iter().map(|l| mermaid_text(l)).collect();
                let label = label.join("<br/>");
                let _ = match node {
                    Node::Source => writeln!(out, "  {id}[/\"{label}\"/]"),
                    Node::Flow => writeln!(out, "  {id}(\"{label}\")"),
                    Node::Sink => writeln!(out, "  {id}[(\"{label}\")]"),
                };
            }
            for (from, to, dead) in &edges {
                let arrow = if *dead { "-. dead letter .->" } else { "-->" };
                let _ = writeln!(out, "  {from} {arrow} {to}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PipelineConfig {
        let toml = r#"
[sources.efento]
type = "coap"
listen = "127.0.0.1:5683"

[sinks.lake]
type = "json_lines"
path = "x.jsonl"

[sinks."dead \"letters\""]
type = "json_lines"
path = "r.jsonl"

[[flows]]
name = "f-1"
from = ["efento"]
stages = [{ type = "dedupe", key = "efento" }, { type = "decode", codec = "efento", output = "raw" }]
to = ["lake"]
dead_letter = "dead \"letters\""
"#;
        crate::config::load_str("pipeline.toml", toml, &|_| None)
            .map(|(c, _)| c)
            .unwrap_or_else(|r| panic!("{r}"))
    }

    #[test]
    fn dot_has_every_node_and_edge_with_quotes_escaped() {
        let dot = render(&config(), Format::Dot);
        let src = id("source", "efento");
        let flow = id("flow", "f-1");
        let lake = id("sink", "lake");
        let dl = id("sink", "dead \"letters\"");
        assert!(dot.starts_with("digraph sensorgate {"), "{dot}");
        assert!(dot.contains(&format!("{src} -> {flow};")), "{dot}");
        assert!(dot.contains(&format!("{flow} -> {lake};")), "{dot}");
        assert!(
            dot.contains(&format!("{flow} -> {dl} [style=dashed")),
            "{dot}"
        );
        assert!(
            dot.contains("flow f-1\\ndedupe efento\\ndecode efento (raw out)"),
            "{dot}"
        );
        assert!(dot.contains("dead \\\"letters\\\"\\njson_lines"), "{dot}");
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    }

    #[test]
    fn mermaid_has_every_node_and_edge() {
        let m = render(&config(), Format::Mermaid);
        let flow = id("flow", "f-1");
        assert!(m.starts_with("flowchart LR\n"), "{m}");
        assert!(
            m.contains(&format!("{} --> {flow}", id("source", "efento"))),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "{flow} -. dead letter .-> {}",
                id("sink", "dead \"letters\"")
            )),
            "{m}"
        );
        assert!(m.contains("dead #quot;letters#quot;<br/>json_lines"), "{m}");
    }

    #[test]
    fn ids_stay_distinct_when_names_clean_to_the_same() {
        assert_ne!(id("sink", "a-b"), id("sink", "a_b"));
    }
}
