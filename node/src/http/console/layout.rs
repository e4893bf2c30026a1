//! A workflow's DAG laid out in layers, left to right, for the console's SVG: each step in the
//! column of its longest path from a root (so every edge points forward, to a later column),
//! ordered within its column by the mean position of its dependencies (a few sweeps of the
//! barycenter heuristic, which removes most crossings of real workflows), then placed on a grid
//! whose cells never overlap. Pure: steps and edges in, boxes and edge paths out.

/// One step's box, in SVG user units.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    pub layer: usize,
    pub x: f64,
    pub y: f64,
}

/// An edge between two placed steps, from the right middle of `from`'s box to the left middle
/// of `to`'s. An edge that skips columns passes through a free slot of each column between
/// (`via`, the slots' top-left corners: cross them horizontally at mid-height), so it never runs
/// behind another step's box.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub via: Vec<(f64, f64)>,
}

/// The layout of a whole workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// By step index, as given.
    pub nodes: Vec<Placed>,
    pub edges: Vec<Edge>,
    pub width: f64,
    pub height: f64,
}

pub const NODE_WIDTH: f64 = 140.0;
pub const NODE_HEIGHT: f64 = 44.0;
const COLUMN_GAP: f64 = 36.0;
const ROW_GAP: f64 = 20.0;
const MARGIN: f64 = 16.0;
const SWEEPS: usize = 4;

/// Lays out `n` steps whose dependencies are `depends_on[i]` (indexes of earlier-finishing
/// steps). Dependencies that name no step, or that would close a cycle (the server refuses
/// both; a layout never panics on them), are left out of the layering.
///
/// Steps and the slots long edges pass through ("virtual" nodes, numbered after the steps) are
/// ordered together, so a long edge's path takes part in reducing crossings like a step does.
pub fn layout(depends_on: &[Vec<usize>]) -> Layout {
    let n = depends_on.len();
    let mut layer = layers(depends_on);
    let layer_count = layer.iter().copied().max().map_or(0, |m| m + 1);
    // Each edge as its chain of nodes: from, the virtual nodes of the columns it skips, to.
    let mut chains: Vec<Vec<usize>> = Vec::new();
    for (to, deps) in depends_on.iter().enumerate() {
        for &from in deps {
            if from >= n || layer[from] >= layer[to] {
                continue;
            }
            let mut chain = vec![from];
            for l in layer[from] + 1..layer[to] {
                chain.push(layer.len());
                layer.push(l);
            }
            chain.push(to);
            chains.push(chain);
        }
    }
    let total = layer.len();

    // Columns, first in the order given, then by barycenter sweeps.
    let mut columns: Vec<Vec<usize>> = vec![Vec::new(); layer_count];
    for (i, &l) in layer.iter().enumerate() {
        columns[l].push(i);
    }
    let mut position = vec![0.0f64; total];
    let index_positions = |columns: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
        for column in columns {
            for (row, &i) in column.iter().enumerate() {
                position[i] = row as f64;
            }
        }
    };
    index_positions(&columns, &mut position);
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); total];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); total];
    for chain in &chains {
        for pair in chain.windows(2) {
            parents[pair[1]].push(pair[0]);
            children[pair[0]].push(pair[1]);
        }
    }
    for sweep in 0..SWEEPS {
        let forward = sweep % 2 == 0;
        let order: Vec<usize> = if forward {
            (1..layer_count).collect()
        } else {
            (0..layer_count.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let neighbours = if forward { &parents } else { &children };
            let mut keyed: Vec<(f64, f64, usize)> = columns[l]
                .iter()
                .map(|&i| {
                    let near = &neighbours[i];
                    let key = if near.is_empty() {
                        position[i]
                    } else {
                        near.iter().map(|&j| position[j]).sum::<f64>() / near.len() as f64
                    };
                    (key, position[i], i)
                })
                .collect();
            // Stable: ties keep their current order, so a layout is the same every time.
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            columns[l] = keyed.into_iter().map(|(_, _, i)| i).collect();
            index_positions(&columns, &mut position);
        }
    }

    let tallest = columns.iter().map(Vec::len).max().unwrap_or(0);
    let height =
        MARGIN * 2.0 + tallest as f64 * NODE_HEIGHT + tallest.saturating_sub(1) as f64 * ROW_GAP;
    let width = MARGIN * 2.0
        + layer_count as f64 * NODE_WIDTH
        + layer_count.saturating_sub(1) as f64 * COLUMN_GAP;
    let mut slots = vec![
        Placed {
            layer: 0,
            x: 0.0,
            y: 0.0
        };
        total
    ];
    for (l, column) in columns.iter().enumerate() {
        // Each column centred vertically.
        let column_height =
            column.len() as f64 * NODE_HEIGHT + column.len().saturating_sub(1) as f64 * ROW_GAP;
        let top = (height - column_height) / 2.0;
        for (row, &i) in column.iter().enumerate() {
            slots[i] = Placed {
                layer: l,
                x: MARGIN + l as f64 * (NODE_WIDTH + COLUMN_GAP),
                y: top + row as f64 * (NODE_HEIGHT + ROW_GAP),
            };
        }
    }
    let edges = chains
        .iter()
        .map(|chain| Edge {
            from: chain[0],
            to: chain[chain.len() - 1],
            via: chain[1..chain.len() - 1]
                .iter()
                .map(|&v| (slots[v].x, slots[v].y))
                .collect(),
        })
        .collect();
    slots.truncate(n);
    Layout {
        nodes: slots,
        edges,
        width,
        height: height.max(MARGIN * 2.0),
    }
}

/// Each step's layer: 0 for a step without (valid) dependencies, else one more than its deepest
/// dependency. Iterative (a deep chain must not exhaust the stack); a dependency on a step that
/// is still being resolved (a cycle) is ignored.
fn layers(depends_on: &[Vec<usize>]) -> Vec<usize> {
    const UNSEEN: usize = usize::MAX;
    const VISITING: usize = usize::MAX - 1;
    let n = depends_on.len();
    let mut layer = vec![UNSEEN; n];
    for root in 0..n {
        if layer[root] != UNSEEN {
            continue;
        }
        // (step, next dependency to look at)
        let mut stack = vec![(root, 0usize)];
        layer[root] = VISITING;
        while let Some(top) = stack.last_mut() {
            let step = top.0;
            let deps = &depends_on[step];
            if top.1 < deps.len() {
                let dep = deps[top.1];
                top.1 += 1;
                if dep < n && layer[dep] == UNSEEN {
                    layer[dep] = VISITING;
                    stack.push((dep, 0));
                }
                continue;
            }
            let deepest = deps
                .iter()
                .filter(|&&d| d < n && layer[d] < VISITING)
                .map(|&d| layer[d] + 1)
                .max()
                .unwrap_or(0);
            layer[step] = deepest;
            stack.pop();
        }
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random DAG: step i depends on some steps before it (so no cycle).
    fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..60).prop_flat_map(|n| {
            proptest::collection::vec(
                proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                n,
            )
            .prop_map(move |picks| {
                picks
                    .into_iter()
                    .enumerate()
                    .map(|(i, deps)| {
                        let mut deps: Vec<usize> = if i == 0 {
                            Vec::new()
                        } else {
                            deps.into_iter().map(|d| d.index(i)).collect()
                        };
                        deps.sort_unstable();
                        deps.dedup();
                        deps
                    })
                    .collect()
            })
        })
    }

    fn overlaps(a: &Placed, b: &Placed) -> bool {
        a.x < b.x + NODE_WIDTH
            && b.x < a.x + NODE_WIDTH
            && a.y < b.y + NODE_HEIGHT
            && b.y < a.y + NODE_HEIGHT
    }

    proptest! {
        #[test]
        fn no_boxes_overlap_and_every_edge_points_forward(deps in dag()) {
            let laid = layout(&deps);
            prop_assert_eq!(laid.nodes.len(), deps.len());
            for (i, a) in laid.nodes.iter().enumerate() {
                prop_assert!(a.x >= 0.0 && a.y >= 0.0);
                prop_assert!(a.x + NODE_WIDTH <= laid.width && a.y + NODE_HEIGHT <= laid.height);
                for b in &laid.nodes[i + 1..] {
                    prop_assert!(!overlaps(a, b), "{:?} overlaps {:?}", a, b);
                }
            }
            // Every dependency is drawn, from an earlier column to a later one.
            let drawn: usize = deps.iter().map(Vec::len).sum();
            prop_assert_eq!(laid.edges.len(), drawn);
            for e in &laid.edges {
                let (from, to) = (&laid.nodes[e.from], &laid.nodes[e.to]);
                prop_assert!(from.layer < to.layer);
                prop_assert!(from.x + NODE_WIDTH < to.x, "edge {:?} does not point forward", e);
                // A long edge crosses each column between through a slot of its own, left to
                // right, never behind a step's box.
                prop_assert_eq!(e.via.len(), to.layer - from.layer - 1);
                let mut x_before = from.x;
                for &(x, y) in &e.via {
                    prop_assert!(x > x_before);
                    x_before = x;
                    let slot = Placed { layer: 0, x, y };
                    for node in &laid.nodes {
                        prop_assert!(!overlaps(&slot, node), "{:?} runs behind {:?}", e, node);
                    }
                    prop_assert!(y + NODE_HEIGHT <= laid.height);
                }
                prop_assert!(x_before < to.x);
            }
            // Layers are longest paths: a step sits right after its deepest dependency.
            for (i, d) in deps.iter().enumerate() {
                let expected = d.iter().map(|&j| laid.nodes[j].layer + 1).max().unwrap_or(0);
                prop_assert_eq!(laid.nodes[i].layer, expected);
            }
            // The same input lays out the same way.
            prop_assert_eq!(layout(&deps), laid);
        }
    }

    #[test]
    fn bad_references_and_cycles_do_not_panic() {
        let laid = layout(&[vec![1], vec![0], vec![7], vec![3]]);
        assert_eq!(laid.nodes.len(), 4);
        assert!(
            laid.edges
                .iter()
                .all(|e| laid.nodes[e.from].layer < laid.nodes[e.to].layer)
        );
        let empty = layout(&[]);
        assert!(empty.nodes.is_empty());
        // A chain of 1000 (the spec's bound on steps) lays out without deep recursion.
        let chain: Vec<Vec<usize>> = (0..1000)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert_eq!(layout(&chain).nodes[999].layer, 999);
    }

    #[test]
    fn an_edge_that_skips_a_column_goes_around_the_step_in_it() {
        // deploy -> smoke -> rollback, and deploy -> rollback directly.
        let laid = layout(&[vec![], vec![0], vec![0, 1]]);
        let long = laid
            .edges
            .iter()
            .find(|e| e.from == 0 && e.to == 2)
            .unwrap();
        assert_eq!(long.via.len(), 1);
        let (x, y) = long.via[0];
        assert_eq!(x, laid.nodes[1].x);
        assert_ne!(y, laid.nodes[1].y);
    }

    #[test]
    fn a_diamond_is_three_columns_with_the_middle_stacked() {
        // build -> (test, lint) -> deploy
        let laid = layout(&[vec![], vec![0], vec![0], vec![1, 2]]);
        let layers: Vec<usize> = laid.nodes.iter().map(|p| p.layer).collect();
        assert_eq!(layers, [0, 1, 1, 2]);
        assert_eq!(laid.nodes[1].x, laid.nodes[2].x);
        assert!(laid.nodes[1].y < laid.nodes[2].y);
        // The ends are centred on the middle pair.
        assert_eq!(laid.nodes[0].y, laid.nodes[3].y);
    }
}
