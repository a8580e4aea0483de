//! `hermes-loadtest`: the synthetic client swarm (issue 7 builds it out).

fn main() {
    println!("hermes-loadtest: not built yet");
}
