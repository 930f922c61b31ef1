//! The codec read against prost's reading of the same bytes: a sample
//! record, unpacked and unknown fields, garbage and damaged records.

use proptest::prelude::*;

use super::*;

/// prost's reading of the same bytes, as parts for [`assemble`].
fn parse_with_prost(bytes: &[u8]) -> Result<(proto::CustomerStateRecord, Columns), CodecError> {
    let r = proto::CustomerStateRecord::decode(bytes)
        .map_err(|e| CodecError::Protobuf(e.to_string()))?;
    let recent = r.recent.clone().unwrap_or_default();
    let days = r.days.clone().unwrap_or_default();
    let d = r.decision.clone().unwrap_or_default();
    let c = Columns {
        time_s_delta: recent.time_s_delta,
        id_hash: recent.id_hash,
        kind: recent.kind,
        rating: recent.rating,
        category_hash: recent.category_hash,
        amount_minor: recent.amount_minor,
        dwell_s: recent.dwell_s,
        token_count: recent.token_count,
        tokens: recent.tokens,
        product_hash: recent.product_hash,
        day_delta: days.day_delta,
        browse: days.browse,
        cart_adds: days.cart_adds,
        purchases: days.purchases,
        reviews: days.reviews,
        spend_minor: days.spend_minor,
        rating_sum: days.rating_sum,
        category_bits: days.category_bits,
        scores: d.scores,
        purchased_products: r.purchased_products.clone(),
        snapshots: r.snapshots.iter().map(snapshot_of_proto).collect(),
    };
    Ok((r, c))
}

fn scalars_of(r: &proto::CustomerStateRecord) -> Scalars<'_> {
    let d = r.decision.as_ref();
    Scalars {
        format_version: r.format_version,
        first_seen_ms: r.first_seen_ms,
        last_event_ms: r.last_event_ms,
        last_purchase_ms: r.last_purchase_ms,
        duplicates: r.duplicates,
        lifetime_purchases: r.lifetime_purchases,
        lifetime_spend_minor: r.lifetime_spend_minor,
        first_purchase_ms: r.first_purchase_ms,
        segment: d.map_or("", |d| d.segment.as_str()),
        model_version: d.map_or("", |d| d.model_version.as_str()),
        decided_at_ms: d.map_or(0, |d| d.decided_at_ms),
        next_review_ms: d.map_or(0, |d| d.next_review_ms),
        since_ms: d.map_or(0, |d| d.since_ms),
        purchase_probability: d.map_or(0.0, |d| d.purchase_probability),
        churn_probability: d.map_or(0.0, |d| d.churn_probability),
        predicted_spend: d.map_or(0.0, |d| d.predicted_spend),
        as_of_ms: d.map_or(0, |d| d.as_of_ms),
        risk_flags: d.map_or(0, |d| d.risk_flags),
        snapshot_through_ms: r.snapshot_through_ms,
    }
}

/// Both readers accept the same bytes and read the same fields.
fn same_reading(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut cols = Columns::default();
    let mut mine = Scalars::default();
    let ours = parse_record(bytes, &mut mine, &mut cols);
    match parse_with_prost(bytes) {
        Ok((r, theirs)) => {
            prop_assert!(ours.is_ok(), "prost reads it, we refuse: {ours:?}");
            let theirs_scalars = scalars_of(&r);
            // Bitwise float comparison: NaN payloads included.
            prop_assert_eq!(format!("{mine:?}"), format!("{theirs_scalars:?}"));
            prop_assert_eq!(format!("{cols:?}"), format!("{theirs:?}"));
            // As text: a damaged float can read as NaN, which `==` never
            // equals (the snapshots' probabilities).
            prop_assert_eq!(
                format!("{:?}", assemble(&mine, &cols).map_err(|e| e.to_string())),
                format!(
                    "{:?}",
                    assemble(&theirs_scalars, &theirs).map_err(|e| e.to_string())
                )
            );
        }
        Err(e) => prop_assert!(ours.is_err(), "prost refuses ({e}), we read it"),
    }
    Ok(())
}

fn sample_record() -> proto::CustomerStateRecord {
    proto::CustomerStateRecord {
        format_version: FORMAT_VERSION,
        first_seen_ms: 1_790_000_000_000,
        last_event_ms: 1_790_000_500_000,
        last_purchase_ms: 1_790_000_400_000,
        recent: Some(proto::RecentEvents {
            time_s_delta: vec![1_790_000_000, 60, 300],
            id_hash: vec![1, u64::MAX, 3],
            kind: vec![1, 2, 3],
            rating: vec![0, 0, 5],
            category_hash: vec![7, 8, 9],
            amount_minor: vec![100, 0, 4_000_000_000],
            dwell_s: vec![5, 70_000, 0],
            token_count: vec![0, 0, 2],
            tokens: vec![11, 12],
            product_hash: vec![4, 5, 6],
        }),
        days: Some(proto::DayBuckets {
            day_delta: vec![20_700, 1],
            browse: vec![2, 0],
            cart_adds: vec![1, 0],
            purchases: vec![0, 1],
            reviews: vec![0, 1],
            spend_minor: vec![0, 4_000],
            rating_sum: vec![0, 5],
            category_bits: vec![1 << 7, 1 << 9],
        }),
        decision: Some(proto::Decision {
            segment: "at_risk".into(),
            scores: vec![0.25, 0.75],
            model_version: "m1".into(),
            decided_at_ms: 1,
            next_review_ms: 2,
            since_ms: 3,
            purchase_probability: 0.5,
            churn_probability: 0.25,
            predicted_spend: 12.5,
            as_of_ms: 4,
            risk_flags: 3,
        }),
        duplicates: 2,
        lifetime_purchases: 4,
        lifetime_spend_minor: 9_000,
        first_purchase_ms: 1_780_000_000_000,
        purchased_products: vec![1, 2, 3, u64::MAX],
        snapshots: vec![
            proto::Snapshot {
                cut_ms: 1_789_999_999_999,
                model_version: "m1".into(),
                segment: "active_buyer".into(),
                purchase_probability: 0.5,
                churn_probability: 0.125,
                predicted_spend: 30.0,
                purchased_before: true,
                scored: true,
                role: "baseline".into(),
                feature_bins: vec![0x21, 0x09],
            },
            proto::Snapshot {
                cut_ms: 1_790_604_799_999,
                ..Default::default()
            },
        ],
        snapshot_through_ms: 1_790_604_799_999,
    }
}

#[test]
fn a_sample_record_reads_as_prost_reads_it() {
    let bytes = sample_record().encode_to_vec();
    same_reading(&bytes)
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let state = decode(&bytes).map_err(|e| e.to_string());
    assert_eq!(state.as_ref().map(|s| s.recent.len()), Ok(3));
    assert_eq!(
        state.as_ref().map(|s| s.recent[2].time_s),
        Ok(1_790_000_360)
    );
}

#[test]
fn unpacked_repeated_fields_and_unknown_fields_are_read() {
    // recent { time_s_delta: 5 (unpacked), time_s_delta: 6 (unpacked) },
    // an unknown varint field 99, an unknown group 50.
    let recent: Vec<u8> = vec![0x08, 5, 0x08, 6];
    let mut bytes = vec![0x08, FORMAT_VERSION as u8, 0x2a, recent.len() as u8];
    bytes.extend(&recent);
    bytes.extend([0x98, 0x06, 1]); // field 99, varint 1
    bytes.extend([0x93, 0x03, 0x08, 1, 0x94, 0x03]); // group 50 { field 1: 1 }
    same_reading(&bytes)
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cols = Columns::default();
    let mut s = Scalars::default();
    assert!(parse_record(&bytes, &mut s, &mut cols).is_ok());
    assert_eq!(cols.time_s_delta, [5, 6]);
}

proptest! {
    #[test]
    fn garbage_is_read_as_prost_reads_it(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        same_reading(&bytes)?;
    }

    #[test]
    fn damaged_records_are_read_as_prost_reads_them(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = sample_record().encode_to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        same_reading(&bytes)?;
        let end = cut.index(bytes.len() + 1);
        same_reading(&bytes[..end])?;
    }
}
