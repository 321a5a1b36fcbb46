//! `allot status`: running instances, partitions with their owner and lag,
//! and the fill of the busiest auctions, as tables (or JSON with `--json`).

use super::{print_json, Common};
use crate::client::connect;
use crate::observe::status::{self, Status};
use crate::wire::names::VERIFIER_CONSUMER as CONSUMER;
use crate::wire::Policy;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Most auctions listed, those with the most tries first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let client = connect(&common.nats_url).await?;
    let status = status::read(&client, &common.prefix, CONSUMER, args.limit).await?;
    if args.json {
        print_json(&status);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The tables, as printed.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("instances: {}\n", s.instances.len()));
    for i in &s.instances {
        out.push_str(&format!(
            "  {}  role={}  version={}\n",
            i.id, i.role, i.version
        ));
    }
    out.push('\n');
    out.push_str(&table(
        &["partition", "owner", "auctions", "events", "pending"],
        s.partitions.iter().map(|p| {
            vec![
                p.partition.to_string(),
                p.owner.clone().unwrap_or_else(|| "(none)".into()),
                p.auctions.to_string(),
                p.events.to_string(),
                p.pending.to_string(),
            ]
        }),
    ));
    out.push('\n');
    out.push_str(&format!(
        "auctions: {} (showing {})\n",
        s.auctions_total,
        s.auctions.len()
    ));
    out.push_str(&table(
        &[
            "auction",
            "policy",
            "capacity",
            "tries",
            "confirmed",
            "held/undecided",
            "cancelled",
        ],
        s.auctions.iter().map(|a| {
            vec![
                a.auction_id.clone(),
                match a.policy {
                    Policy::FirstN => "first_n".into(),
                    Policy::TopAmount => "top_amount".into(),
                },
                a.capacity.to_string(),
                a.tries.to_string(),
                a.confirmed.to_string(),
                a.open.to_string(),
                a.cancelled.to_string(),
            ]
        }),
    ));
    out
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
