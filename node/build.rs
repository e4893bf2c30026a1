//! The commit `batond` is built from (`BATON_COMMIT`): the `baton` CLI's build script, shared.

#[path = "../client/build.rs"]
mod commit;

fn main() {
    commit::main();
}
