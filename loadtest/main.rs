//! # `hermes-loadtest`: the synthetic client swarm
//!
//! ```text
//!   main (flags -> Config) ──► driver::run::<P>  (coordinator: phases, reports)
//!                                 │
//!            ┌────────────────────┼────────────────────┐
//!        worker 0             worker 1      ...     worker T-1
//!        mio Poll + slab      mio Poll + slab       (member m on worker m % T)
//!            │ P: Proto = mqtt::Mqtt | resp::Redis | hermes::Hermes
//!            ▼
//!        server under test (loopback): hermes relay | mosquitto | redis-server
//! ```
//!
//! N connections (members) in groups of G; the first K members of each group
//! send, open loop at R messages/s (`--rate`) or closed loop with at most W
//! messages outstanding (`--window`), each payload stamped with (sender,
//! sequence, send time) so every receiver checks end-to-end latency and
//! exactly-once delivery. A line a second, a final report, `--json FILE`.
//! Everything is bounded in time; loopback only. `ARCHITECTURE.md`
//! ("Load test") and the README ("Performance") say more.

mod driver;
#[cfg(test)]
mod fake;
mod hermes;
mod mqtt;
mod proto;
mod resp;
mod stats;
mod sys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::driver::{Config, Report};
use crate::stats::{Passes, error_total, errors_by_kind};

/// Which server the swarm drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// A Hermes relay (`hermes relay`).
    Hermes,
    /// An MQTT 3.1.1 broker (mosquitto), QoS 0, one topic per group.
    Mqtt,
    /// Redis pub/sub over RESP3, one channel per group.
    Redis,
}

/// How Hermes payloads are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Crypto {
    /// Real sender-key encryption (Hermes only).
    Real,
    /// Opaque payloads of the same size as sealed messages.
    None,
}

/// The load-test swarm: many connections, groups, senders; latency and
/// exactly-once delivery checked end to end.
#[derive(Debug, Parser)]
#[command(name = "hermes-loadtest", version, about, long_about = None)]
struct Args {
    /// Server address (loopback). Default: 127.0.0.1:33001 (hermes), :1883
    /// (mqtt), :6379 (redis).
    #[arg(long)]
    server: Option<SocketAddr>,
    /// Connections, one member each.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Members per group.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Global index of this process's first member, to split one swarm over
    /// several processes: each runs whole groups (a multiple of
    /// --group-size) and reports its own senders and receivers; add the
    /// JSON reports up. Closed loop (--window) works within a process.
    #[arg(long, default_value_t = 0)]
    first_member: usize,
    /// Open loop: messages per second per sender.
    #[arg(long)]
    rate: Option<f64>,
    /// Senders per group (the first K members of each group). Default: all.
    #[arg(long)]
    senders: Option<usize>,
    /// Seconds of sending (or of holding idle connections).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Payload bytes per message (at least 20).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Hermes payloads: real sender-key encryption or opaque bytes.
    #[arg(long, value_enum, default_value_t = Crypto::None)]
    crypto: Crypto,
    /// Connect, join and only ping.
    #[arg(long)]
    idle: bool,
    /// The relay's process id: report its RSS and CPU time from /proc.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Closed loop: at most W messages per sender sent but not yet received
    /// by every member.
    #[arg(long)]
    window: Option<u32>,
    /// Write the final report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server under test.
    #[arg(long, value_enum, default_value_t = Target::Hermes)]
    target: Target,
    /// Worker threads (default: the CPUs this process may use, at most 4).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds allowed for connecting before the run starts anyway.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Seconds to wait for in-flight messages after sending stops.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Seconds between pings on each connection.
    #[arg(long, default_value_t = 10.0)]
    ping_interval: f64,
    /// Members per worker thread between connect and ready (connect plus
    /// handshake); raise it to test connect bursts.
    #[arg(long, default_value_t = 128)]
    max_pending_connects: usize,
    /// Directory caching synthetic Hermes identities between runs.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// No per-second lines, only the final report.
    #[arg(long)]
    quiet: bool,
    /// Hermes: seconds between a connection's periodic cumulative acks
    /// (besides one every 64 entries); a multiple of the 0.1 s tick.
    #[arg(long, default_value_t = 0.1)]
    ack_interval: f64,
}

/// `--ack-interval` in ticks of the swarm's 100 ms period (at least 1).
fn ack_ticks(secs: f64) -> Result<u32, String> {
    if !(secs.is_finite() && (0.0..=3600.0).contains(&secs)) {
        return Err("--ack-interval must be between 0 and 3600 seconds".into());
    }
    // In range: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ticks = (secs * 10.0).round() as u32;
    Ok(ticks.max(1))
}

fn secs(v: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{flag} must be a non-negative number of seconds"))
}

fn config(a: &Args) -> Result<Config, String> {
    let default_port = match a.target {
        Target::Hermes => 33001,
        Target::Mqtt => 1883,
        Target::Redis => 6379,
    };
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4)
    });
    Ok(Config {
        server: a
            .server
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port))),
        connections: a.connections,
        first_member: a.first_member,
        group_size: a.group_size,
        senders_per_group: a.senders.unwrap_or(a.group_size).min(a.group_size),
        rate: a.rate,
        window: a.window,
        idle: a.idle,
        duration: secs(a.duration, "--duration")?,
        payload: a.payload,
        threads,
        connect_timeout: secs(a.connect_timeout, "--connect-timeout")?,
        drain: secs(a.drain, "--drain")?,
        ping_interval: secs(a.ping_interval, "--ping-interval")?,
        max_pending_connects: a.max_pending_connects,
        relay_pid: a.relay_pid,
        progress: !a.quiet,
    })
}

/// The JSON report (`--json`).
fn report_json(a: &Args, cfg: &Config, r: &Report) -> serde_json::Value {
    let c = &r.counts;
    let mut v = json!({
        "target": format!("{:?}", a.target).to_lowercase(),
        "server": cfg.server.to_string(),
        "connections": cfg.connections,
        "first_member": cfg.first_member,
        "group_size": cfg.group_size,
        "senders_per_group": cfg.senders_per_group,
        "rate": cfg.rate,
        "window": cfg.window,
        "idle": cfg.idle,
        "payload": a.payload,
        "crypto": format!("{:?}", a.crypto).to_lowercase(),
        "wire_payload": cfg.payload,
        "threads": cfg.threads,
        "ack_interval_s": a.ack_interval,
        "connected": r.connected,
        "ready": c.ready,
        "failed": c.failed,
        "sent": c.sent,
        "delivered": c.delivered,
        "expected_deliveries": c.expected,
        "missing": r.missing,
        "duplicates": c.duplicates,
        "gaps": c.gaps,
        "self_echo": c.self_echo,
        "pongs": c.pongs,
        "errors": error_total(c),
        "errors_by_kind": errors_by_kind(c),
        "deliveries_per_sec": r.deliveries_per_sec.round(),
        "run_secs": r.run_secs,
        "connect_secs": r.connect_secs,
        "connects_per_sec": (c.ready as f64 / r.connect_secs.max(1e-9)).round(),
        "latency_us": {
            "p50": r.latency.p50,
            "p90": r.latency.p90,
            "p99": r.latency.p99,
            "p999": r.latency.p999,
            "max": r.latency.max,
        },
        "swarm_cpu_pct": r.swarm_cpu_pct,
        "swarm_runq_wait_pct": r.swarm_runq_wait_pct,
        "swarm_pass_us": pass_json(&r.passes, Some(&r.worker_passes)),
    });
    if let (Some(rel), Some(obj)) = (&r.relay, v.as_object_mut()) {
        let per_conn = if r.connected > 0 {
            Some((rel.after.rss_kib as f64 - rel.before.rss_kib as f64) / r.connected as f64)
        } else {
            None
        };
        obj.insert("relay_rss_kib_before".into(), json!(rel.before.rss_kib));
        obj.insert(
            "relay_rss_kib_connected".into(),
            json!(rel.connected.rss_kib),
        );
        obj.insert("relay_rss_kib_after".into(), json!(rel.after.rss_kib));
        obj.insert("relay_rss_kib_per_connection".into(), json!(per_conn));
        obj.insert("relay_cpu_ms_before".into(), json!(rel.before.cpu_ms));
        obj.insert("relay_cpu_ms_after".into(), json!(rel.after.cpu_ms));
        obj.insert("relay_cpu_pct".into(), json!(r.relay_cpu_pct));
    }
    v
}

/// Loop-pass figures: microsecond percentiles, the number of passes and,
/// for the whole swarm, each worker's.
fn pass_json(p: &Passes, workers: Option<&[Passes]>) -> serde_json::Value {
    let mut v = json!({
        "p50": p.us.p50,
        "p99": p.us.p99,
        "p999": p.us.p999,
        "max": p.us.max,
        "passes": p.count,
        "cpu": {"p99": p.cpu_us.p99, "max": p.cpu_us.max},
    });
    if let (Some(w), Some(obj)) = (workers, v.as_object_mut()) {
        let list: Vec<_> = w.iter().map(|p| pass_json(p, None)).collect();
        obj.insert("workers".into(), json!(list));
    }
    v
}

fn print_final(v: &serde_json::Value) {
    println!("--- final report ---");
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            println!("{k:>28}: {val}");
        }
    }
}

fn run(a: &Args) -> Result<bool, String> {
    let mut cfg = config(a)?;
    if a.target != Target::Hermes && a.crypto == Crypto::Real {
        return Err("--crypto real applies to --target hermes only".into());
    }
    driver::validate(&cfg).map_err(|e| e.to_string())?;
    match sys::raise_nofile_limit() {
        Ok((soft, _)) if soft < cfg.connections as u64 + 64 => eprintln!(
            "hermes-loadtest: warning: open-file limit {soft} is below {} connections",
            cfg.connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("hermes-loadtest: warning: cannot raise the open-file limit: {e}"),
    }
    let report = match a.target {
        Target::Mqtt => driver::run::<mqtt::Mqtt>(cfg.clone(), std::sync::Arc::new(())),
        Target::Redis => driver::run::<resp::Redis>(cfg.clone(), std::sync::Arc::new(())),
        Target::Hermes => {
            let setup = hermes::SetupConfig {
                server: cfg.server,
                connections: cfg.connections,
                first_member: cfg.first_member,
                group_size: cfg.group_size,
                cache_dir: a
                    .cache_dir
                    .clone()
                    .unwrap_or_else(hermes::default_cache_dir),
                timeout: cfg.connect_timeout,
                threads: cfg.threads.max(4),
                senders_per_group: cfg.senders_per_group,
                real_crypto: a.crypto == Crypto::Real,
                ack_ticks: ack_ticks(a.ack_interval)?,
            };
            let ctx = hermes::setup(&setup).map_err(|e| e.to_string())?;
            if a.crypto == Crypto::None {
                // Opaque ciphertexts as long as real sealed messages of --payload bytes.
                let name = hermes::member_name(0, cfg.connections);
                cfg.payload = hermes::sealed_len(a.payload, &name);
            }
            driver::run::<hermes::Hermes>(cfg.clone(), std::sync::Arc::new(ctx))
        }
    }
    .map_err(|e| e.to_string())?;
    let v = report_json(a, &cfg, &report);
    print_final(&v);
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(error_total(&report.counts) == 0 && report.missing == 0 && report.counts.duplicates == 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        // The run finished but something was lost, duplicated or failed.
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("hermes-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_interval_in_ticks() {
        assert_eq!(ack_ticks(0.1), Ok(1));
        assert_eq!(ack_ticks(0.0), Ok(1));
        assert_eq!(ack_ticks(1.0), Ok(10));
        assert!(ack_ticks(-1.0).is_err());
        assert!(ack_ticks(f64::NAN).is_err());
        assert!(ack_ticks(1e9).is_err());
    }
}
