//! Exclusive XML Canonicalization 1.0, without comments
//! (https://www.w3.org/TR/xml-exc-c14n/), of one element subtree, optionally
//! leaving out one descendant (the enveloped-signature transform), with the
//! InclusiveNamespaces PrefixList. Element and attribute prefixes are read
//! from the source text, since roxmltree keeps only namespace URIs.

use roxmltree::{Node, NodeId};

/// Canonicalizes the subtree at `root` of a document parsed from `src`.
pub fn canonicalize(
    src: &str,
    root: Node<'_, '_>,
    exclude: Option<NodeId>,
    inclusive: &[&str],
) -> String {
    let mut out = String::with_capacity(src.len());
    // (prefix, uri) pairs rendered by output ancestors, innermost last.
    let mut rendered: Vec<(String, String)> = Vec::new();
    element(src, root, exclude, inclusive, &mut rendered, &mut out);
    out
}

fn literal_qname(src: &str, start: usize) -> &str {
    let s = &src[start..];
    let end = s
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>' || c == '=')
        .unwrap_or(s.len());
    &s[..end]
}

fn prefix_of(qname: &str) -> &str {
    qname.split_once(':').map_or("", |(p, _)| p)
}

/// The URI a prefix ("" for the default namespace) is bound to at `node`.
fn in_scope<'a>(node: Node<'a, '_>, prefix: &str) -> &'a str {
    node.namespaces()
        .find(|ns| ns.name().unwrap_or("") == prefix)
        .map_or("", |ns| ns.uri())
}

fn nearest_rendered<'r>(rendered: &'r [(String, String)], prefix: &str) -> Option<&'r str> {
    rendered
        .iter()
        .rev()
        .find(|(p, _)| p == prefix)
        .map(|(_, u)| u.as_str())
}

fn element(
    src: &str,
    node: Node<'_, '_>,
    exclude: Option<NodeId>,
    inclusive: &[&str],
    rendered: &mut Vec<(String, String)>,
    out: &mut String,
) {
    // `<` is at range().start; the qname follows it.
    let qname = literal_qname(src, node.range().start + 1);
    let mut prefixes: Vec<&str> = vec![prefix_of(qname)];
    let mut attrs: Vec<(&str, &str, &str, String)> = Vec::new(); // (uri, local, qname, value)
    for a in node.attributes() {
        let aq = &src[a.range_qname()];
        let p = prefix_of(aq);
        if !p.is_empty() && p != "xml" {
            prefixes.push(p);
        }
        attrs.push((
            a.namespace().unwrap_or(""),
            a.name(),
            aq,
            a.value().to_string(),
        ));
    }
    for p in inclusive {
        let p = if *p == "#default" { "" } else { *p };
        if node.namespaces().any(|ns| ns.name().unwrap_or("") == p) {
            prefixes.push(p);
        }
    }
    prefixes.sort_unstable();
    prefixes.dedup();
    let pushed = rendered.len();
    let mut decls: Vec<(String, String)> = Vec::new();
    for p in prefixes {
        if p == "xml" {
            continue;
        }
        let uri = in_scope(node, p);
        let before = nearest_rendered(rendered, p);
        let needed = match before {
            Some(b) => b != uri,
            // An empty default namespace needs no declaration unless an
            // output ancestor declared a non-empty one.
            None => !(p.is_empty() && uri.is_empty()),
        };
        if needed {
            decls.push((p.to_string(), uri.to_string()));
        }
    }
    out.push('<');
    out.push_str(qname);
    for (p, uri) in &decls {
        if p.is_empty() {
            out.push_str(" xmlns=\"");
        } else {
            out.push_str(" xmlns:");
            out.push_str(p);
            out.push_str("=\"");
        }
        escape_attr(uri, out);
        out.push('"');
    }
    rendered.extend(decls);
    attrs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (_, _, aq, v) in &attrs {
        out.push(' ');
        out.push_str(aq);
        out.push_str("=\"");
        escape_attr(v, out);
        out.push('"');
    }
    out.push('>');
    for child in node.children() {
        if Some(child.id()) == exclude {
            continue;
        }
        match child.node_type() {
            roxmltree::NodeType::Element => element(src, child, exclude, inclusive, rendered, out),
            roxmltree::NodeType::Text => escape_text(child.text().unwrap_or(""), out),
            roxmltree::NodeType::PI => {
                if let Some(pi) = child.pi() {
                    out.push_str("<?");
                    out.push_str(pi.target);
                    if let Some(v) = pi.value {
                        out.push(' ');
                        out.push_str(v);
                    }
                    out.push_str("?>");
                }
            }
            // Without comments: dropped. The root never appears as a child.
            roxmltree::NodeType::Comment | roxmltree::NodeType::Root => {}
        }
    }
    out.push_str("</");
    out.push_str(qname);
    out.push('>');
    rendered.truncate(pushed);
}

fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(xml: &str) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        canonicalize(xml, doc.root_element(), None, &[])
    }

    #[test]
    fn only_visibly_utilized_namespaces_are_rendered_once() {
        let xml = r#"<a:r xmlns:a="urn:a" xmlns:b="urn:b" xmlns="urn:d"><a:c b:x="1" y='2'/><e>t</e></a:r>"#;
        assert_eq!(
            c14n(xml),
            r#"<a:r xmlns:a="urn:a"><a:c xmlns:b="urn:b" y="2" b:x="1"></a:c><e xmlns="urn:d">t</e></a:r>"#
        );
    }

    #[test]
    fn text_and_attributes_are_escaped_and_comments_dropped() {
        let xml = "<r a=\"&lt;&amp;&quot;&#9;\">x &amp; &lt;y&gt;<!-- c -->\r\n<?p v?></r>";
        assert_eq!(
            c14n(xml),
            "<r a=\"&lt;&amp;&quot;&#x9;\">x &amp; &lt;y&gt;\n<?p v?></r>"
        );
    }

    #[test]
    fn inclusive_prefixes_are_rendered_even_when_unused() {
        let xml = r#"<r xmlns:xs="urn:xs"><c/></r>"#;
        let doc = roxmltree::Document::parse(xml).unwrap();
        assert_eq!(
            canonicalize(xml, doc.root_element(), None, &["xs"]),
            r#"<r xmlns:xs="urn:xs"><c></c></r>"#
        );
    }
}
