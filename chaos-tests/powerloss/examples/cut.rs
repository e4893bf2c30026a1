//! Cuts by hand: `cargo run -p baton-powerloss --example cut -- ROOT JOURNAL_DIR [SEED]` rewinds
//! ROOT after the process that ran under the shim was killed (torn writes with SEED).

use std::path::PathBuf;

use baton_powerloss::Tear;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, journal, rest @ ..] = args.as_slice() else {
        return Err("usage: cut ROOT JOURNAL_DIR [SEED]".into());
    };
    let tear = match rest {
        [] => Tear::None,
        [seed] => Tear::Seeded(seed.parse().map_err(|e| format!("seed {seed:?}: {e}"))?),
        _ => return Err("usage: cut ROOT JOURNAL_DIR [SEED]".into()),
    };
    let report = baton_powerloss::cut(&PathBuf::from(root), &PathBuf::from(journal), tear)?;
    println!("{report}");
    Ok(())
}
