//! Hashing and the review-text tokenizer. Review text is reduced here to
//! hashed word and bigram ids; the text itself is never kept.

/// 64-bit FNV-1a: stable across platforms and releases (state on disk and
/// model inputs depend on it, so it must never change).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// 32-bit hash of a category (`0` for an empty category).
pub fn category_hash(category: &str) -> u32 {
    if category.is_empty() {
        return 0;
    }
    let h = fnv1a64(category.as_bytes());
    // Fold the halves; never 0 for a non-empty category.
    ((h >> 32) as u32 ^ h as u32).max(1)
}

/// Name of this tokenizer in feature specs; bump it if the rules change.
pub const TOKENIZER: &str = "lower-alnum-words-bigrams-fnv1a-v1";

/// Up to `max` token ids of `text`: lower-cased alphanumeric words and the
/// bigrams of adjacent words, interleaved in reading order (w1, w2, w1 w2,
/// w3, w2 w3, ...). Ids are 16-bit hashes, never 0 (0 is padding); models
/// bucket them further (`text_buckets` ≤ 65536).
pub fn tokenize(text: &str, max: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(max.min(32));
    let mut prev: Option<String> = None;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if out.len() >= max {
            break;
        }
        let word = word.to_lowercase();
        out.push(token_id(word.as_bytes()));
        if let Some(p) = &prev {
            if out.len() < max {
                let bigram = format!("{p} {word}");
                out.push(token_id(bigram.as_bytes()));
            }
        }
        prev = Some(word);
    }
    out
}

fn token_id(bytes: &[u8]) -> u16 {
    let h = fnv1a64(bytes);
    ((h >> 48) as u16 ^ (h >> 32) as u16 ^ (h >> 16) as u16 ^ h as u16).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_case_and_punctuation_insensitive() {
        assert_eq!(tokenize("Great shoes!", 16), tokenize("great, SHOES", 16));
        assert_eq!(tokenize("great shoes", 16).len(), 3);
        assert_eq!(tokenize("a b c d e f", 4).len(), 4);
        assert!(tokenize("", 16).is_empty());
        assert!(tokenize("x y", 16).iter().all(|t| *t != 0));
    }

    #[test]
    fn hashes_are_stable() {
        // Pinned: changing these breaks every stored state and model.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(category_hash(""), 0);
        assert_ne!(category_hash("shoes"), category_hash("socks"));
    }
}
