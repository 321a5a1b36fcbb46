//! The protocol document names only what exists: every `allot.` subject it
//! spells is one the code builds, every error code, reject, cancel and
//! refuse reason it lists is one the code has, and every `--flag` the docs
//! give is one some `allot` command takes. Drift between the docs and the
//! code caused half of the identity issue's findings.

use std::collections::BTreeSet;
use std::process::Command;

use allot::wire::{CancelReason, ErrorCode, OutcomeKind, RefuseReason, Subjects};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every `backticked` span of `text`.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The concrete tokens of a subject pattern, up to its first placeholder
/// or wildcard: `allot.admin.open.<auction_id>` gives `allot.admin.open`.
fn concrete(pattern: &str) -> String {
    pattern
        .split('.')
        .take_while(|t| !t.is_empty() && !t.contains(['<', '>', '*', '|']))
        .collect::<Vec<_>>()
        .join(".")
}

/// Every subject the code builds, for a sample auction and partition.
fn subjects() -> Vec<String> {
    let s = Subjects::default();
    let a = "a";
    let mut all = vec![
        s.bid(a),
        s.open_request(a),
        s.withdraw(a),
        s.raise(a),
        s.close_request(a),
        s.hold(a),
        s.command(a),
        s.result_request(a),
        s.status_request(a),
        s.try_event(a),
        s.tries_entry(0),
        s.tries_count(0, Some(a)),
        s.auction_event(a),
        s.log_partition(0),
        s.outcome(a, OutcomeKind::Confirmed),
        s.outcome(a, OutcomeKind::Cancelled),
        s.outcome_live(a, OutcomeKind::Confirmed),
        s.outcome_live(a, OutcomeKind::Cancelled),
        s.outcomes_followed(Some(a)),
        s.outcomes_entry(0),
        s.decided(a),
        s.fence(0, 0),
        allot::streams::PARTITIONS_KEY.to_string(),
    ];
    all.extend(s.lookups(0));
    all.extend(s.outcome_stream_subjects());
    all.extend(s.log_subjects());
    all
}

#[test]
fn every_subject_the_protocol_document_names_is_built_by_the_code() {
    let built = subjects();
    let doc = read("docs/integrating.md");
    let mut checked = 0;
    for span in spans(&doc).into_iter().filter(|s| s.starts_with("allot.")) {
        let prefix = concrete(span);
        let known = built
            .iter()
            .any(|b| b == &prefix || b.starts_with(&format!("{prefix}.")));
        assert!(
            known,
            "docs/integrating.md names subject {span:?}, which no code builds"
        );
        checked += 1;
    }
    assert!(
        checked > 10,
        "only {checked} subjects found: is the document still there?"
    );
}

/// The names listed after `label` in the document, up to the end of that
/// list item: each backticked snake_case word.
fn listed(doc: &str, label: &str) -> Vec<String> {
    let start = doc
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in the document"));
    let rest = &doc[start + label.len()..];
    let end = rest
        .find("\n- ")
        .or_else(|| rest.find("\n\n"))
        .unwrap_or(rest.len());
    // What a parenthesis says about a code (a field it names) is not a code.
    let mut item = String::new();
    let mut depth = 0;
    for c in rest[..end].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => item.push(c),
            _ => {}
        }
    }
    spans(&item)
        .into_iter()
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_code_and_reason_the_protocol_document_lists_exists() {
    let doc = read("docs/integrating.md");
    let codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
    let errors = listed(&doc, "- Error codes:");
    assert!(errors.len() > 5, "{errors:?}");
    for code in &errors {
        assert!(
            codes.contains(code.as_str()),
            "error code {code:?} is not in ErrorCode"
        );
    }
    let rejects = [
        "unknown_auction",
        "auction_closed",
        "sold_out",
        "below_minimum",
    ];
    for reason in listed(&doc, "- Rejection reasons:") {
        assert!(
            rejects.contains(&reason.as_str()),
            "reject reason {reason:?}"
        );
    }
    let cancels: BTreeSet<&str> = CancelReason::ALL.iter().map(|c| c.name()).collect();
    let refusals: BTreeSet<&str> = RefuseReason::ALL.iter().map(|c| c.name()).collect();
    for reason in listed(&doc, "- Refusal reasons") {
        assert!(
            refusals.contains(reason.as_str()) || cancels.contains(reason.as_str()),
            "refusal reason {reason:?} is not in RefuseReason"
        );
    }
}

/// Every long flag any `allot` command takes, from its `--help`.
fn flags() -> BTreeSet<String> {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut texts = vec![help(&[])];
    let commands = [
        "serve", "demo", "bid", "withdraw", "raise", "result", "watch", "status", "audit",
        "loadtest", "auction",
    ];
    for c in commands {
        texts.push(help(&[c]));
    }
    for c in ["open", "close", "status"] {
        texts.push(help(&["auction", c]));
    }
    texts
        .iter()
        .flat_map(|t| t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_flag_the_docs_give_is_taken_by_a_command() {
    let known = flags();
    assert!(
        known.contains("--nats-url") && known.contains("--wait"),
        "{known:?}"
    );
    for doc in [
        "docs/cli.md",
        "docs/operating.md",
        "docs/integrating.md",
        "docs/load-testing.md",
    ] {
        let text = read(doc);
        // allot's own commands and bare flags; not other tools' (`nats ...`).
        let ours = |span: &&str| span.starts_with("allot ") || span.starts_with("--");
        for span in spans(&text).into_iter().filter(ours) {
            for word in span.split_whitespace() {
                let flag = word
                    .split(['=', '[', ']', ',', ')', '('])
                    .find(|w| w.starts_with("--"))
                    .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()));
                let Some(flag) = flag.filter(|f| f.len() > 2) else {
                    continue;
                };
                assert!(
                    known.contains(flag),
                    "{doc} gives flag {flag:?}, which no allot command takes"
                );
            }
        }
    }
}
