//! The run's outputs for people and machines: `results.json` (every verdict with counts and
//! examples), `REPORT.md` (header, verdicts, fault table, workload table, anomalies) and
//! `lateness.svg` (first-delivery lateness over time, and each callback event's delay after its
//! run ended, fault windows shaded).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::check::{events, first_deliveries, Input, Validity, Verdict};
use crate::history::{rfc3339_us, Type};
use crate::sink::Delivery;
use crate::svg::{scatter, Band, Series};

/// Facts about the run, for the header.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub run: String,
    pub profile: String,
    pub seed: u64,
    pub plant: Option<String>,
    pub network: String,
    /// How the nodes' data dirs were stored (LazyFs or plain); empty in older runs.
    #[serde(default)]
    pub storage: String,
    pub fallback_reason: Option<String>,
    pub started: i64,
    pub fault_time_s: u64,
    pub wall_s: f64,
    pub git: String,
    pub hookd: String,
    pub node_starts: u32,
}

pub fn overall(verdicts: &[Verdict]) -> Validity {
    if verdicts.iter().any(|v| v.valid == Validity::Invalid) {
        Validity::Invalid
    } else if verdicts.iter().any(|v| v.valid == Validity::Unknown) {
        Validity::Unknown
    } else {
        Validity::Valid
    }
}

pub fn write_results(dir: &Path, meta: &Meta, verdicts: &[Verdict]) -> anyhow::Result<()> {
    let v = json!({
        "meta": meta,
        "valid": overall(verdicts),
        "checkers": verdicts,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

/// What a delivery was to its run, in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    First,
    /// After attempts that all failed.
    Retry,
    /// After the run was already delivered with a 2xx.
    AfterOk,
}

/// Every delivery in arrival order, with what it was to its run.
fn arrivals(deliveries: &[Delivery]) -> Vec<(&Delivery, Arrival)> {
    let mut sorted: Vec<&Delivery> = deliveries.iter().collect();
    sorted.sort_by_key(|d| d.recv);
    let mut seen_ok: HashMap<&str, bool> = HashMap::new();
    sorted
        .into_iter()
        .map(|d| {
            let arrival = match seen_ok.get(d.webhook_id.as_str()) {
                Some(true) => Arrival::AfterOk,
                Some(false) => Arrival::Retry,
                None => Arrival::First,
            };
            *seen_ok.entry(d.webhook_id.as_str()).or_insert(false) |= d.ok;
            (d, arrival)
        })
        .collect()
}

fn sec(meta: &Meta, t: i64) -> f64 {
    (t - meta.started) as f64 / 1e6
}

/// Draws `lateness.svg`.
pub fn lateness_svg(meta: &Meta, input: &Input) -> String {
    let first = first_deliveries(&input.deliveries);
    let mut pts: Vec<(f64, f64)> = first
        .values()
        .map(|d| {
            (
                sec(meta, d.scheduled_at),
                ((d.recv - d.scheduled_at) as f64 / 1000.0).max(0.1),
            )
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut dups = Vec::new();
    let mut retries = Vec::new();
    for (d, arrival) in arrivals(&input.deliveries) {
        let p = (
            sec(meta, d.recv),
            ((d.recv - d.scheduled_at) as f64 / 1000.0).max(0.1),
        );
        match arrival {
            Arrival::AfterOk => dups.push(p),
            Arrival::Retry => retries.push(p),
            Arrival::First => {}
        }
    }
    let bands: Vec<Band> = input
        .windows
        .iter()
        .map(|w| Band {
            from: sec(meta, w.start),
            to: sec(meta, w.end),
            label: w.fault.name(),
        })
        .collect();
    let callbacks: Vec<(f64, f64)> = events::event_delays(input)
        .into_iter()
        .map(|(recv, delay)| (sec(meta, recv), (delay as f64 / 1000.0).max(0.1)))
        .collect();
    let x_max = input
        .deliveries
        .iter()
        .map(|d| sec(meta, d.recv))
        .chain(input.events.iter().map(|e| sec(meta, e.recv)))
        .fold(1.0, f64::max);
    scatter(
        &format!("{}: lateness of deliveries (log scale)", meta.run),
        "lateness, ms",
        x_max,
        &bands,
        &[
            Series {
                name: "first delivery, by due time".into(),
                color: "#1f77b4".into(),
                points: pts,
            },
            Series {
                name: "retry after a failed attempt".into(),
                color: "#999999".into(),
                points: retries,
            },
            Series {
                name: "spurious duplicate (after a 2xx)".into(),
                color: "#d62728".into(),
                points: dups,
            },
            Series {
                name: "event, after its run ended".into(),
                color: "#2ca02c".into(),
                points: callbacks,
            },
        ],
    )
}

fn mark(v: Validity) -> &'static str {
    match v {
        Validity::Valid => "valid",
        Validity::Invalid => "**INVALID**",
        Validity::Unknown => "unknown",
    }
}

pub fn write_report(
    dir: &Path,
    meta: &Meta,
    input: &Input,
    verdicts: &[Verdict],
) -> anyhow::Result<()> {
    std::fs::write(dir.join("lateness.svg"), lateness_svg(meta, input))?;
    let mut s = String::new();
    let all = overall(verdicts);
    let _ = writeln!(s, "# hookd chaos run `{}`: {}\n", meta.run, mark(all));
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| profile | {} |", meta.profile);
    let _ = writeln!(s, "| seed | {} |", meta.seed);
    let _ = writeln!(
        s,
        "| planted bug | {} |",
        meta.plant.as_deref().unwrap_or("none")
    );
    let _ = writeln!(s, "| network | {} |", meta.network);
    let _ = writeln!(s, "| storage | {} |", meta.storage);
    if let Some(r) = &meta.fallback_reason {
        let _ = writeln!(s, "| fallback because | {r} |");
    }
    let _ = writeln!(s, "| started | {} |", rfc3339_us(meta.started));
    let _ = writeln!(s, "| faults for | {} s |", meta.fault_time_s);
    let _ = writeln!(s, "| wall time | {:.0} s |", meta.wall_s);
    let _ = writeln!(s, "| git | {} |", meta.git);
    let _ = writeln!(s, "| hookd | `{}` |", meta.hookd);
    let _ = writeln!(s, "| node (re)starts | {} |", meta.node_starts);
    let _ = writeln!(
        s,
        "\n## Verdicts\n\n| checker | verdict | summary |\n|---|---|---|"
    );
    for v in verdicts {
        let _ = writeln!(s, "| {} | {} | {} |", v.name, mark(v.valid), v.summary);
    }
    let passed = verdicts
        .iter()
        .filter(|v| v.valid == Validity::Valid)
        .count();
    let _ = writeln!(s, "\n{passed} passed, {} failed\n", verdicts.len() - passed);

    // Fault table.
    let _ = writeln!(s, "## Faults\n\n| # | fault | targets | leader | start s | end s | new leader after ms | next delivery after ms | spurious dups in window | detail |\n|---|---|---|---|---|---|---|---|---|---|");
    let recov: Vec<Value> = verdicts
        .iter()
        .find(|v| v.name == "timeliness")
        .and_then(|v| v.counts.get("leader_faults"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let mut recov_by_at: BTreeMap<String, Value> = BTreeMap::new();
    for r in recov {
        if let Some(at) = r["at"].as_str() {
            recov_by_at.insert(at.to_owned(), r.clone());
        }
    }
    let dup_times: Vec<i64> = arrivals(&input.deliveries)
        .into_iter()
        .filter(|(_, a)| *a == Arrival::AfterOk)
        .map(|(d, _)| d.recv)
        .collect();
    // What each installed fault's `stop` event says it did (a membership change names its ids
    // and timings there), by the start's time.
    let mut stop_detail: HashMap<i64, &str> = HashMap::new();
    let mut open: Option<i64> = None;
    for e in &input.nemesis {
        match (e.phase.as_str(), e.outcome.as_str()) {
            ("start", "installed") => open = Some(e.t),
            ("stop", _) => {
                if let Some(t) = open.take() {
                    stop_detail.insert(t, e.detail.as_str());
                }
            }
            _ => {}
        }
    }
    let mut i = 0;
    for e in input.nemesis.iter().filter(|e| e.phase == "start") {
        i += 1;
        let w = input.windows.iter().find(|w| w.start == e.t);
        let (end, nl) = match w {
            Some(w) => (
                format!("{:.1}", sec(meta, w.end)),
                w.new_leader_after_us
                    .map(|x| (x / 1000).to_string())
                    .unwrap_or("-".into()),
            ),
            None => (format!("({})", e.outcome), "-".into()),
        };
        let next = recov_by_at
            .get(&rfc3339_us(e.t))
            .and_then(|r| r["to_next_delivery_ms"].as_i64())
            .map(|x| x.to_string())
            .unwrap_or("-".into());
        let dups = w
            .map(|w| {
                dup_times
                    .iter()
                    .filter(|t| **t >= w.start && **t <= w.end + input.params.settle)
                    .count()
                    .to_string()
            })
            .unwrap_or("-".into());
        let _ = writeln!(
            s,
            "| {i} | {} | {:?} | {} | {:.1} | {end} | {nl} | {next} | {dups} | {} |",
            e.fault.name(),
            e.targets,
            e.leader.map(|l| l.to_string()).unwrap_or("-".into()),
            sec(meta, e.t),
            match stop_detail.get(&e.t) {
                Some(stop) if !stop.is_empty() && *stop != "healed" =>
                    format!("{} → {stop}", e.detail),
                _ => e.detail.clone(),
            }
            .replace('|', "/"),
        );
    }

    // Workload table.
    let mut by_f: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for o in &input.ops {
        let e = by_f.entry(o.f.as_str()).or_default();
        match o.typ {
            Type::Ok => e[0] += 1,
            Type::Fail => e[1] += 1,
            _ => e[2] += 1,
        }
    }
    let _ = writeln!(
        s,
        "\n## Workload\n\n| op | ok | fail | info |\n|---|---|---|---|"
    );
    for (f, [ok, fail, info]) in &by_f {
        let _ = writeln!(s, "| {f} | {ok} | {fail} | {info} |");
    }
    let _ = writeln!(
        s,
        "\n{} deliveries received for {} runs.\n",
        input.deliveries.len(),
        input
            .deliveries
            .iter()
            .map(|d| d.webhook_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let _ = writeln!(
        s,
        "{} event deliveries (callbacks) received for {} events.\n",
        input.events.len(),
        input
            .events
            .iter()
            .map(|e| e.webhook_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let _ = writeln!(s, "## Lateness\n\n![lateness](lateness.svg)\n");

    // Anomalies.
    let _ = writeln!(s, "## Anomalies\n");
    let mut any = false;
    for v in verdicts.iter().filter(|v| v.valid != Validity::Valid) {
        any = true;
        let _ = writeln!(s, "### {} ({})\n\n```", v.name, mark(v.valid));
        for e in &v.examples {
            let _ = writeln!(s, "{e}");
        }
        let _ = writeln!(s, "```\n");
    }
    if !any {
        let _ = writeln!(s, "None.\n");
    }
    let _ = writeln!(s, "## Counts\n\n```");
    for v in verdicts {
        let _ = writeln!(s, "{}: {}", v.name, json!(v.counts));
    }
    let _ = writeln!(s, "```");
    std::fs::write(dir.join("REPORT.md"), s)?;
    Ok(())
}
