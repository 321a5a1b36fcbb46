//! `allot audit` against a real history: a faithful one passes, a forged
//! outcome is found, and the command's exit code says which.

use crate::common;

use allot::audit;
use allot::wire::AuctionSpec;
use common::{allot, bid, Harness};

#[tokio::test]
async fn audit_passes_a_faithful_history_and_finds_a_forged_outcome() {
    let h = Harness::start().await;
    // No auction fills, so the gateway writes every bid (a fast reject
    // writes nothing to audit); `b` cancels by its per-bidder limit.
    h.open("a", AuctionSpec::with_capacity(100)).await;
    h.open(
        "b",
        AuctionSpec {
            max_wins_per_bidder: 1,
            ..AuctionSpec::with_capacity(5)
        },
    )
    .await;
    for i in 0..8 {
        h.client
            .bid("a", &bid(&format!("b{i}"), &format!("u{i}"), 5))
            .await
            .unwrap();
    }
    // A resend, and one bidder's three bids on a second auction.
    h.client.bid("a", &bid("b0", "u0", 5)).await.unwrap();
    for i in 0..3 {
        h.client
            .bid("b", &bid(&format!("c{i}"), "u0", 5))
            .await
            .unwrap();
    }
    h.wait_until_decided().await;
    let s = &h.client.subjects;

    let all = audit::run(&h.js, s, None, Some(h.data_dir()))
        .await
        .unwrap();
    assert_eq!(all.differences, Vec::<String>::new());
    assert_eq!((all.decided, all.outcomes, all.auctions), (11, 11, 2));
    assert_eq!(all.snapshot, Some(11));
    let one = audit::run(&h.js, s, Some("b"), None).await.unwrap();
    assert_eq!(
        (one.decided, one.outcomes, one.differences.len()),
        (3, 3, 0)
    );

    let data_dir = h.data_dir().to_str().unwrap().to_string();
    let out = allot(&h, &["audit", "--all", "--data-dir", &data_dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("differences: none"), "{text}");

    // A second, contradicting outcome for a cancelled bid of `b`, written
    // behind the verifier's back.
    let mut forged = h.outcomes(Some("b")).await;
    forged.retain(|o| o.rank.is_none());
    let mut o = forged.pop().expect("b has a cancelled bid");
    o.kind = allot::wire::OutcomeKind::Confirmed;
    o.rank = Some(2);
    o.reason = None;
    h.js.publish(
        s.outcome("b", o.kind),
        serde_json::to_vec(&o).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let found = audit::run(&h.js, s, Some("b"), None).await.unwrap();
    assert_eq!(found.differences.len(), 1, "{:?}", found.differences);
    assert!(found.differences[0].contains(&format!("{:?}", o.bid_id)));
    assert!(found.differences[0].contains("2 outcomes"));
    let untouched = audit::run(&h.js, s, Some("a"), None).await.unwrap();
    assert!(untouched.differences.is_empty());

    let out = allot(&h, &["audit", "b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a difference fails the command: {text}"
    );
    assert!(text.contains("differences: 1"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit found 1 difference"));

    // Asking for nothing is a usage error, not an audit of nothing.
    assert!(!allot(&h, &["audit"]).status.success());
}

/// An auction the streams know nothing of is a mistake to say, not a clean
/// audit; an id that is not one is refused before anything is read.
#[tokio::test]
async fn audit_of_an_unknown_auction_fails() {
    let h = Harness::start().await;
    h.open("quiet", AuctionSpec::with_capacity(1)).await;

    let out = allot(&h, &["audit", "nope"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("differences: none"), "{stdout}");
    assert!(stderr.contains("no auction \"nope\""), "{stderr}");

    // Opened, with no bid yet: its open event is audited, and agrees.
    let out = allot(&h, &["audit", "quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("differences: none"), "{stdout}");

    let s = &h.client.subjects;
    for bad in ["", "*", "a.>"] {
        let e = audit::run(&h.js, s, Some(bad), None).await.unwrap_err();
        assert!(e.to_string().contains("must be 1 to 64"), "{e}");
    }
}
