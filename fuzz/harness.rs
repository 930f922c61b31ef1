//! The checks each fuzz target runs on one input. `tests/fuzz_regressions.rs`
//! includes this file too and runs every saved input in
//! `fuzz/regressions/` through the same checks under `make test`, so an
//! input that once failed stays a test.

use std::path::Path;

use segstream::event::corpus;
use segstream::event::encode::{encode, to_proto, WireFormat};
use segstream::event::{Decoder, Encoding, Limits};
use segstream::state::changelog;
use segstream::state::{PartitionStore, StoreLimits};

/// The wall clock the decoder's time bounds are checked against: fixed, so
/// that a saved input behaves the same on every replay.
pub const NOW_MS: i64 = 1_780_000_000_000;

/// Record decoding, every framing. The first byte picks the decoder's
/// encoding (auto, protobuf, json, confluent: its two low bits) and the length of the record key taken
/// from the following bytes (0-31; 31 means no key); the rest is the value.
///
/// Checks: decoding never panics; a refusal names a reason and says why;
/// an accepted event, re-encoded in every wire format the contract allows,
/// decodes to the same event (under the auto-detecting decoder and under
/// the one the input used where it applies).
pub fn decode(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let encoding = match first & 3 {
        0 => Encoding::Auto,
        1 => Encoding::Protobuf,
        2 => Encoding::Json,
        _ => Encoding::Confluent,
    };
    let key_len = usize::from(first >> 3);
    let (key, value) = if key_len == 31 {
        (None, rest)
    } else {
        let n = key_len.min(rest.len());
        (Some(&rest[..n]), &rest[n..])
    };
    let decoder = Decoder::new(encoding, Limits::default());
    match decoder.decode(key, Some(value), NOW_MS) {
        Err(rejection) => assert!(
            !rejection.message.is_empty(),
            "a refusal says why: {rejection:?}"
        ),
        Ok((event, _framing)) => {
            let auto = Decoder::new(Encoding::Auto, Limits::default());
            let wire = to_proto(&event);
            for format in WireFormat::ALL {
                let bytes = encode(&wire, format);
                let again = auto.decode(key, Some(&bytes), NOW_MS);
                match again {
                    Ok((e, _)) => assert_eq!(e, event, "{format:?} round trip"),
                    Err(r) => panic!("{format:?}: the re-encoded event is refused: {r:?}"),
                }
            }
        }
    }
}

/// The changelog codec. Checks: decoding arbitrary bytes never panics, and
/// a state that decodes re-encodes to bytes that decode and re-encode to the
/// same bytes. (Bytes, not states, are compared: a corrupt record can carry
/// a NaN, which no state equals.)
pub fn changelog(data: &[u8]) {
    if let Ok(state) = changelog::decode(data) {
        let bytes = changelog::encode(&state);
        let again = changelog::decode(&bytes).expect("a re-encoded state decodes");
        assert_eq!(
            changelog::encode(&again),
            bytes,
            "the codec round trip keeps the state"
        );
    }
}

/// A decode input: the selector byte (encoding, key length), key, value.
fn decode_input(encoding: u8, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    let key_len = key.map_or(31, |k| k.len().min(30)) as u8;
    let mut out = vec![(key_len << 3) | encoding];
    if let Some(k) = key {
        out.extend_from_slice(&k[..k.len().min(30)]);
    }
    out.extend_from_slice(value);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(name), bytes)
}

/// Writes the seed corpus of every target under `root` (`root/decode`,
/// `root/changelog`) from segstream's reference corpus: every valid event
/// kind in every wire format, every known bad record, and the changelog
/// records of customers built from such events.
pub fn write_seeds(root: &Path) -> std::io::Result<()> {
    let (decode_dir, changelog_dir) = (root.join("decode"), root.join("changelog"));
    std::fs::create_dir_all(&decode_dir)?;
    std::fs::create_dir_all(&changelog_dir)?;

    let t = NOW_MS - 3_600_000;
    let valid = [
        corpus::browse("c-1", "e-1", t),
        corpus::purchase("c-1", "e-2", t),
        corpus::review("c-1", "e-3", t),
    ];
    let mut n = 0;
    for event in &valid {
        for format in WireFormat::ALL {
            let value = encode(event, format);
            for encoding in 0..4 {
                write(
                    &decode_dir,
                    &format!("valid-{n}"),
                    &decode_input(encoding, Some(b"c-1"), &value),
                )?;
                n += 1;
            }
        }
    }
    for bad in corpus::bad_records("c-1", NOW_MS, 2048) {
        write(
            &decode_dir,
            &format!(
                "bad-{}",
                bad.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
            ),
            &decode_input(0, bad.key.as_deref(), &bad.value),
        )?;
    }

    // Customers with a few events of each kind, as the changelog holds them.
    let decoder = Decoder::new(Encoding::Auto, Limits::default());
    let mut store = PartitionStore::new(StoreLimits::default());
    for c in 0..4 {
        let customer = format!("c-{c}");
        for i in 0..(3 * c + 1) {
            let at = t - 86_400_000 * i64::from(i % 40);
            let id = format!("{customer}-{i}");
            let raw = match i % 3 {
                0 => corpus::browse(&customer, &id, at),
                1 => corpus::purchase(&customer, &id, at),
                _ => corpus::review(&customer, &id, at),
            };
            let bytes = encode(&raw, WireFormat::Protobuf);
            if let Ok((event, _)) = decoder.decode(Some(customer.as_bytes()), Some(&bytes), NOW_MS)
            {
                store.record(&event, tokio::time::Instant::now());
            }
        }
    }
    for (i, (_, state)) in store.iter().enumerate() {
        write(
            &changelog_dir,
            &format!("state-{i}"),
            &changelog::encode(state),
        )?;
    }
    println!(
        "seeds: {} decode inputs, {} changelog records in {}",
        std::fs::read_dir(&decode_dir)?.count(),
        std::fs::read_dir(&changelog_dir)?.count(),
        root.display()
    );
    Ok(())
}

/// A target's start: with `SEGSTREAM_FUZZ_SEEDS=DIR` in the environment it
/// writes the seed corpus there and exits instead of fuzzing (`make fuzz`
/// does this first; the binaries are instrumented, so the seeds are written
/// by one of them rather than by a separate tool).
pub fn init() {
    if let Some(dir) = std::env::var_os("SEGSTREAM_FUZZ_SEEDS") {
        match write_seeds(Path::new(&dir)) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("writing the seeds: {e}");
                std::process::exit(1)
            }
        }
    }
}
