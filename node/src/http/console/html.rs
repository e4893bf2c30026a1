//! Small HTML helpers for the console's server-rendered pages: escaping, the page frame, and
//! the DAG as SVG.

use std::fmt::Write;

use super::layout::{self, NODE_HEIGHT, NODE_WIDTH};

/// Text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string component.
pub fn url(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Who is looking, for the page frame.
pub struct Frame<'a> {
    /// `token NAME (role ROLE)`, or None when the node runs --insecure.
    pub who: Option<String>,
    /// The CSRF token of the viewer's session, for the logout form.
    pub csrf: &'a str,
}

/// A whole page: the header with navigation (`current` marks the section), then `body`.
pub fn page(title: &str, current: &str, frame: &Frame<'_>, body: &str) -> String {
    let nav = [
        ("workflows", "/workflows", "Workflows"),
        ("schedules", "/schedules", "Schedules"),
        ("agents", "/agents", "Agents"),
        ("namespaces", "/namespaces", "Namespaces"),
        ("audit", "/audit", "Audit"),
        ("cluster", "/cluster", "Cluster"),
    ]
    .iter()
    .map(|(key, href, label)| {
        let mark = if *key == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{mark}>{label}</a>")
    })
    .collect::<String>();
    let who = match &frame.who {
        Some(who) => format!(
            "<span>{}</span><form method=\"post\" action=\"/logout\"><input type=\"hidden\" \
             name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
            esc(who),
            esc(frame.csrf)
        ),
        None => "<span>--insecure: no authentication</span>".to_string(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Baton</title><link rel=\"stylesheet\" href=\"/console/console.css\">\
         </head><body><header class=\"top\"><a class=\"brand\" href=\"/workflows\">Baton</a>\
         <nav aria-label=\"Sections\">{nav}</nav><div class=\"who\">{who}</div></header>\
         <main>{body}</main><script src=\"/console/console.js\" defer></script></body></html>",
        title = esc(title),
    )
}

/// A state badge.
pub fn badge(state: &str) -> String {
    format!("<span class=\"badge {s}\">{s}</span>", s = esc(state))
}

/// One step of the DAG: its name, state and dependencies (indexes into the same list).
pub struct DagStep<'a> {
    pub name: &'a str,
    pub state: &'a str,
    pub depends_on: Vec<usize>,
}

/// The DAG as SVG: a box per step (`g.step` with `data-step` and `data-state`, focusable, a
/// button to screen readers), an arrow per dependency, laid out by [`layout::layout`].
///
/// `from_index`: the first log index the page does not show yet (the workflow's revision plus
/// one): the live updates start there, so a retried workflow's earlier end is not replayed.
pub fn dag_svg(workflow_id: u64, finished: bool, from_index: u64, steps: &[DagStep<'_>]) -> String {
    let deps: Vec<Vec<usize>> = steps.iter().map(|s| s.depends_on.clone()).collect();
    let laid = layout::layout(&deps);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg data-workflow=\"{workflow_id}\" data-finished=\"{finished}\" \
         data-from-index=\"{from_index}\" width=\"{w}\" \
         height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"group\" aria-label=\"The workflow's \
         steps, in the order they run\" xmlns=\"http://www.w3.org/2000/svg\"><defs><marker \
         id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" \
         fill=\"#9aa3b2\"/></marker></defs>",
        w = laid.width,
        h = laid.height,
    );
    for edge in &laid.edges {
        let (a, b) = (&laid.nodes[edge.from], &laid.nodes[edge.to]);
        let (mut x, mut y) = (a.x + NODE_WIDTH, a.y + NODE_HEIGHT / 2.0);
        let mut d = format!("M{x},{y}");
        // A curve across each gap between columns; a straight run across each skipped column.
        let curve = |d: &mut String, x: &mut f64, y: &mut f64, x2: f64, y2: f64| {
            let bend = (x2 - *x) / 2.0;
            let _ = write!(d, " C{},{} {},{y2} {x2},{y2}", *x + bend, *y, x2 - bend);
            (*x, *y) = (x2, y2);
        };
        for &(vx, vy) in &edge.via {
            let mid = vy + NODE_HEIGHT / 2.0;
            curve(&mut d, &mut x, &mut y, vx, mid);
            x = vx + NODE_WIDTH;
            let _ = write!(d, " L{x},{y}");
        }
        curve(&mut d, &mut x, &mut y, b.x, b.y + NODE_HEIGHT / 2.0);
        let _ = write!(
            svg,
            "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"{d}\" \
             marker-end=\"url(#arrow)\"/>",
            esc(steps[edge.from].name),
            esc(steps[edge.to].name),
        );
    }
    for (step, at) in steps.iter().zip(&laid.nodes) {
        let shown = truncate(step.name, 17);
        let _ = write!(
            svg,
            "<g class=\"step\" data-step=\"{name}\" data-state=\"{state}\" tabindex=\"0\" \
             role=\"button\" aria-label=\"step {name}\" transform=\"translate({x},{y})\">\
             <title>{name}</title><rect width=\"{NODE_WIDTH}\" height=\"{NODE_HEIGHT}\"/>\
             <text x=\"12\" y=\"18\">{shown}</text><text class=\"state\" x=\"12\" y=\"34\">\
             {state}</text></g>",
            name = esc(step.name),
            state = esc(step.state),
            shown = esc(&shown),
            x = at.x,
            y = at.y,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(chars - 1).collect();
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere_it_lands() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        let svg = dag_svg(
            7,
            false,
            1,
            &[
                DagStep {
                    name: "build",
                    state: "succeeded",
                    depends_on: vec![],
                },
                DagStep {
                    name: "<script>",
                    state: "running",
                    depends_on: vec![0],
                },
            ],
        );
        assert!(svg.contains("data-step=\"build\" data-state=\"succeeded\""));
        assert!(svg.contains("data-step=\"&lt;script&gt;\""));
        assert!(!svg.contains("<script>"));
        assert_eq!(svg.matches("class=\"edge\"").count(), 1);
        assert_eq!(truncate("a-very-long-step-name-indeed", 10), "a-very-lo…");
    }
}
