//! `allot audit`: decide the log again offline and compare with the
//! published outcomes (and the snapshot); exits non-zero on a difference.

use std::path::PathBuf;

use super::{parse_id, Common};
use crate::audit::{self, Findings};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The auction to audit.
    #[arg(required_unless_present = "all", conflicts_with = "all", value_parser = parse_id)]
    pub auction_id: Option<String>,
    /// Audit every auction.
    #[arg(long)]
    pub all: bool,
    /// Also compare with the verifier's snapshot in this directory (read
    /// only; the verifier may keep running).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most differences printed.
    #[arg(long, default_value_t = 50)]
    pub show: usize,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let client = common.client().await?;
    let js = async_nats::jetstream::new(client.client.clone());
    let findings = audit::run(
        &js,
        &client.subjects,
        args.auction_id.as_deref(),
        args.data_dir.as_deref(),
    )
    .await?;
    if let Some(auction_id) = &args.auction_id {
        // Nothing of it anywhere: nothing was audited, and most likely
        // the id or --prefix is mistyped.
        let absent = findings.log_entries == 0 && findings.outcomes == 0;
        if absent && findings.differences.is_empty() {
            anyhow::bail!(
                "no auction {auction_id:?}: the log holds no event of it (is the id or --prefix wrong?)"
            );
        }
    }
    print!("{}", summary(&findings, args.show));
    if !findings.differences.is_empty() {
        anyhow::bail!("audit found {} difference(s)", findings.differences.len());
    }
    Ok(())
}

fn summary(f: &Findings, show: usize) -> String {
    let mut out = format!(
        "log entries: {}\nauctions:    {}\ndecided:     {} (replayed)\noutcomes:    {}\n",
        f.log_entries, f.auctions, f.decided, f.outcomes
    );
    if let Some(n) = f.snapshot {
        out.push_str(&format!("snapshot:    {n} decisions\n"));
    }
    if f.differences.is_empty() {
        out.push_str("differences: none\n");
        return out;
    }
    out.push_str(&format!("differences: {}\n", f.differences.len()));
    for d in f.differences.iter().take(show) {
        out.push_str(&format!("  {d}\n"));
    }
    if f.differences.len() > show {
        out.push_str(&format!("  ... and {} more\n", f.differences.len() - show));
    }
    out
}
