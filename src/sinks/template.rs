//! Name templates shared by the sinks (MQTT topics, ThingWorx thing names): literal text with
//! `{device}`, `{kind}`, `{gateway}` and `{source}` filled from each record.

use crate::record::Record;

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["device", "kind", "gateway", "source"];

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Field(&'static str),
}

impl Part {
    /// Parses `template`; `what` names the key in errors (`topic`, `thing`).
    pub fn parse(what: &str, template: &str) -> Result<Vec<Part>, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{what} `{template}`: unclosed `{{`"))?;
            let name = &rest[open + 1..open + close];
            let field = PLACEHOLDERS
                .iter()
                .find(|p| **p == name)
                .ok_or_else(|| {
                    format!(
                        "{what} `{template}`: unknown placeholder `{{{name}}}` (known: {{device}}, {{kind}}, {{gateway}}, {{source}})"
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(parts)
    }

    /// The template with every placeholder as `x`: what its text looks like, for checks.
    pub fn sample(parts: &[Part]) -> String {
        parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Field(_) => "x",
            })
            .collect()
    }

    /// Fills the template from `record`, passing each character of a value through `clean`. Fails
    /// when the record lacks a device or gateway the template needs, or a value is empty.
    pub fn render(
        parts: &[Part],
        record: &Record,
        clean: impl Fn(char) -> char,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in parts {
            let value = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Part::Field("device") => record
                    .device
                    .as_deref()
                    .ok_or("the record has no device for its name")?,
                Part::Field("gateway") => record
                    .origin
                    .gateway
                    .as_deref()
                    .ok_or("the record has no gateway for its name")?,
                Part::Field("kind") => record.kind.as_str(),
                Part::Field(_) => &record.source,
            };
            if value.is_empty() {
                return Err("an empty value in the name template".into());
            }
            out.extend(value.chars().map(&clean));
        }
        Ok(out)
    }
}
