//! baton-chaos: the fault-injection suite (issue 5). Not built yet; this binary only says so.

fn main() {
    eprintln!("baton-chaos: the chaos suite is not implemented yet");
    std::process::exit(2);
}
