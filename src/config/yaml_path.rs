//! Names the key at a line and column of a YAML text (`delivery.tls.ca_file`,
//! `policies[1]`), so that errors from the deserialiser, which know only a position,
//! can say which setting they are about.

use serde_saphyr::granit_parser::{Event, Parser};

/// The YAML node found at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    /// Path of the node itself; for a mapping key, the path of the value it introduces.
    pub path: String,
    /// Path of the mapping or sequence that contains the node (empty at the top level).
    pub parent: String,
    /// Whether the node is a mapping key.
    pub is_key: bool,
    /// The text of a scalar node.
    pub scalar: Option<String>,
    /// Where the node starts (1-based, in characters).
    pub line: u64,
    pub column: u64,
}

impl Node {
    /// The mapping a key belongs to, or the node itself when it is a value: where a key is
    /// unknown or missing.
    pub fn container(&self) -> &str {
        if self.is_key {
            &self.parent
        } else {
            &self.path
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: String,
        expect_key: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A node is complete: the enclosing mapping now waits for the other half of its pair,
/// the enclosing sequence for its next item.
fn complete(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { expect_key, .. }) => *expect_key = !*expect_key,
        Some(Frame::Seq { index, .. }) => *index += 1,
        None => {}
    }
}

/// The outermost node that starts at `line`:`column` (1-based, in characters), or else
/// the last node that starts before it. (A block mapping starts where its first key does;
/// the mapping is the node a type error is about, and a key error names the mapping
/// either way.) `None` when the text has no node before the position.
pub(super) fn node_at(text: &str, line: u64, column: u64) -> Option<Node> {
    let target = (line, column);
    let mut stack: Vec<Frame> = Vec::new();
    let mut exact: Option<Node> = None;
    let mut before: Option<Node> = None;
    for item in Parser::new_from_str(text) {
        // A syntax error ends the walk; what was seen so far still names the spot.
        let Ok((event, span)) = item else { break };
        match event {
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
                complete(&mut stack);
                continue;
            }
            _ if !event.is_node() => continue,
            _ => {}
        }
        let start = (span.start.line() as u64, span.start.col() as u64 + 1);
        if start > target {
            break;
        }
        let (parent, path, is_key) = match stack.last() {
            None => (String::new(), String::new(), false),
            Some(Frame::Map {
                path,
                expect_key: true,
                ..
            }) => (path.clone(), path.clone(), true),
            Some(Frame::Map { path, key, .. }) => (path.clone(), child(path, key), false),
            Some(Frame::Seq { path, index }) => (path.clone(), format!("{path}[{index}]"), false),
        };
        let scalar = match &event {
            Event::Scalar(value, ..) => Some(value.to_string()),
            _ => None,
        };
        if is_key {
            let name = scalar.clone().unwrap_or_else(|| "?".to_string());
            if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                key.clone_from(&name);
            }
        }
        let node = Node {
            path: if is_key {
                child(&parent, key_of(&stack))
            } else {
                path.clone()
            },
            parent,
            is_key,
            scalar,
            line: start.0,
            column: start.1,
        };
        if start < target {
            before = Some(node);
        } else if exact.is_none() {
            exact = Some(node);
        }
        match event {
            Event::SequenceStart(..) => stack.push(Frame::Seq { path, index: 0 }),
            Event::MappingStart(..) => stack.push(Frame::Map {
                path,
                key: String::new(),
                expect_key: true,
            }),
            _ => complete(&mut stack),
        }
    }
    exact.or(before)
}

fn key_of(stack: &[Frame]) -> &str {
    match stack.last() {
        Some(Frame::Map { key, .. }) => key,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
enabled: true
delivery:
  tls: { verify: true, ca_file: null }
  port: 25
policies:
  - name: research
    recipients: [\".lab.example.com\", cto@example.com]
  - name: bulk
    colour: red
";

    #[test]
    fn value_paths() {
        let n = node_at(TEXT, 4, 9).unwrap();
        assert_eq!(n.path, "delivery.port");
        assert_eq!(n.scalar.as_deref(), Some("25"));
        assert!(!n.is_key);
        let n = node_at(TEXT, 3, 33).unwrap();
        assert_eq!(n.path, "delivery.tls.ca_file");
        let n = node_at(TEXT, 7, 39).unwrap();
        assert_eq!(n.path, "policies[0].recipients[1]");
        assert_eq!(n.scalar.as_deref(), Some("cto@example.com"));
    }

    #[test]
    fn key_paths() {
        let n = node_at(TEXT, 9, 5).unwrap();
        assert!(n.is_key);
        assert_eq!(n.container(), "policies[1]");
        assert_eq!(n.path, "policies[1].colour");
        let n = node_at(TEXT, 1, 1).unwrap();
        assert_eq!(n.container(), "");
        let n = node_at(TEXT, 2, 1).unwrap();
        assert_eq!(n.path, "delivery");
        assert_eq!(n.container(), "");
    }

    #[test]
    fn between_nodes_falls_back_to_the_last_one_before() {
        let n = node_at(TEXT, 4, 30).unwrap();
        assert_eq!(n.path, "delivery.port");
        assert_eq!(node_at("", 1, 1), None);
    }
}
