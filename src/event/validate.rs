//! Contract rules applied to every decoded event, whatever its encoding.

use super::proto;
use super::{Browse, BrowseAction, Event, LineItem, Payload, Purchase, Reason, Rejection, Review};

/// Bounds enforced on every event (from `[validation]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest accepted record value in bytes.
    pub max_event_bytes: usize,
    /// Longest id (event, customer, order, product, session) in bytes.
    pub max_id_bytes: usize,
    /// Longest category or currency string in bytes.
    pub max_name_bytes: usize,
    /// Longest review text in bytes.
    pub max_text_bytes: usize,
    /// Most line items in one purchase.
    pub max_line_items: usize,
    /// How far in the past (relative to now) an event time may be.
    pub max_past_ms: i64,
    /// How far in the future (relative to now) an event time may be.
    pub max_future_ms: i64,
    /// Whether the Kafka key must equal `customer_id` (the state is
    /// partition-local, so a wrongly keyed event would land in the wrong state).
    pub require_key_match: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 256 * 1024,
            max_id_bytes: 128,
            max_name_bytes: 128,
            max_text_bytes: 8 * 1024,
            max_line_items: 512,
            max_past_ms: 3 * 365 * crate::units::DAY_MS,
            max_future_ms: 10 * 60_000,
            require_key_match: true,
        }
    }
}

struct Checker<'a> {
    limits: &'a Limits,
}

impl Checker<'_> {
    fn len(&self, field: &str, value: &str, max: usize) -> Result<(), Rejection> {
        if value.len() > max {
            return Err(Rejection::new(
                Reason::StringTooLong,
                format!("{field} is {} bytes, above the limit of {max}", value.len()),
            ));
        }
        Ok(())
    }

    fn id(&self, field: &str, value: &str) -> Result<(), Rejection> {
        self.len(field, value, self.limits.max_id_bytes)?;
        // Ids become Kafka keys, header values, log fields and file names
        // downstream: no control characters (NUL, newline, ...) and no
        // bidirectional overrides, which make one id display as another.
        if let Some(c) = value.chars().find(|&c| forbidden_in_id(c)) {
            return Err(Rejection::new(
                Reason::InvalidField,
                format!(
                    "{field} contains U+{:04X}, a control or bidirectional-formatting character",
                    u32::from(c)
                ),
            ));
        }
        Ok(())
    }

    fn name(&self, field: &str, value: &str) -> Result<(), Rejection> {
        self.len(field, value, self.limits.max_name_bytes)
    }

    fn non_negative(&self, field: &str, value: i64) -> Result<(), Rejection> {
        if value < 0 {
            return Err(Rejection::new(
                Reason::NegativeAmount,
                format!("{field} is {value}, must be >= 0"),
            ));
        }
        Ok(())
    }
}

/// Validates a decoded event and converts it to the internal form.
pub(crate) fn validate(
    raw: proto::Event,
    key: Option<&[u8]>,
    now_ms: i64,
    limits: &Limits,
) -> Result<Event, Rejection> {
    let c = Checker { limits };
    if raw.customer_id.trim().is_empty() {
        return Err(Rejection::new(
            Reason::MissingCustomer,
            "customer_id is missing or empty",
        ));
    }
    c.id("customer_id", &raw.customer_id)?;
    if raw.event_id.trim().is_empty() {
        return Err(Rejection::new(
            Reason::MissingEventId,
            "event_id is missing or empty",
        ));
    }
    c.id("event_id", &raw.event_id)?;
    if limits.require_key_match && key != Some(raw.customer_id.as_bytes()) {
        let what = match key {
            None => "the record has no key".to_string(),
            Some(k) => format!("the record key ({} bytes) differs", k.len()),
        };
        return Err(Rejection::new(
            Reason::KeyMismatch,
            format!("{what}; input topics must be keyed by customer_id"),
        ));
    }
    if raw.event_time_ms <= 0 {
        return Err(Rejection::new(
            Reason::TimeOutOfRange,
            "event_time_ms is missing, zero or negative",
        ));
    }
    let earliest = now_ms.saturating_sub(limits.max_past_ms);
    let latest = now_ms.saturating_add(limits.max_future_ms);
    if raw.event_time_ms < earliest || raw.event_time_ms > latest {
        return Err(Rejection::new(
            Reason::TimeOutOfRange,
            format!(
                "event_time_ms {} is outside [{earliest}, {latest}] \
                 (now - validation.max_past, now + validation.max_future)",
                raw.event_time_ms
            ),
        ));
    }
    let payload = match raw.payload {
        None => {
            return Err(Rejection::new(
                Reason::UnknownPayload,
                "no browse, purchase or review payload (missing, or a payload type this version does not know)",
            ))
        }
        Some(proto::event::Payload::Browse(b)) => Payload::Browse(browse(&c, b)?),
        Some(proto::event::Payload::Purchase(p)) => Payload::Purchase(purchase(&c, p)?),
        Some(proto::event::Payload::Review(r)) => Payload::Review(review(&c, r)?),
    };
    Ok(Event {
        event_id: raw.event_id,
        customer_id: raw.customer_id,
        event_time_ms: raw.event_time_ms,
        payload,
    })
}

fn browse(c: &Checker<'_>, b: proto::Browse) -> Result<Browse, Rejection> {
    let action = match proto::BrowseAction::try_from(b.action) {
        Ok(proto::BrowseAction::View) => BrowseAction::View,
        Ok(proto::BrowseAction::CartAdd) => BrowseAction::CartAdd,
        Ok(proto::BrowseAction::CartRemove) => BrowseAction::CartRemove,
        Ok(proto::BrowseAction::Wishlist) => BrowseAction::Wishlist,
        Ok(proto::BrowseAction::Search) => BrowseAction::Search,
        Ok(proto::BrowseAction::Unspecified) | Err(_) => return Err(Rejection::new(
            Reason::InvalidField,
            "browse.action is missing or unknown (view, cart_add, cart_remove, wishlist, search)",
        )),
    };
    c.id("browse.product_id", &b.product_id)?;
    c.id("browse.session_id", &b.session_id)?;
    c.name("browse.category", &b.category)?;
    c.non_negative("browse.dwell_ms", b.dwell_ms)?;
    c.non_negative("browse.price_minor", b.price_minor)?;
    if action != BrowseAction::Search && b.product_id.is_empty() {
        return Err(Rejection::new(
            Reason::InvalidField,
            "browse.product_id is required for every action but search",
        ));
    }
    Ok(Browse {
        product_id: b.product_id,
        category: b.category,
        session_id: b.session_id,
        action,
        dwell_ms: b.dwell_ms,
        price_minor: b.price_minor,
    })
}

fn purchase(c: &Checker<'_>, p: proto::Purchase) -> Result<Purchase, Rejection> {
    if p.order_id.is_empty() {
        return Err(Rejection::new(
            Reason::InvalidField,
            "purchase.order_id is missing",
        ));
    }
    c.id("purchase.order_id", &p.order_id)?;
    if p.items.is_empty() {
        return Err(Rejection::new(
            Reason::InvalidField,
            "purchase.items is empty; an order has at least one line",
        ));
    }
    if p.items.len() > c.limits.max_line_items {
        return Err(Rejection::new(
            Reason::InvalidField,
            format!(
                "purchase has {} line items, above the limit of {}",
                p.items.len(),
                c.limits.max_line_items
            ),
        ));
    }
    c.non_negative("purchase.total_minor", p.total_minor)?;
    if ISO_4217.binary_search(&p.currency.as_str()).is_err() {
        return Err(Rejection::new(
            Reason::InvalidField,
            if p.currency.len() == 3 && p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                "purchase.currency is not an ISO 4217 currency code"
            } else {
                "purchase.currency must be an ISO 4217 code of three upper-case letters"
            },
        ));
    }
    let mut items = Vec::with_capacity(p.items.len());
    for (i, item) in p.items.into_iter().enumerate() {
        c.id("purchase.items.product_id", &item.product_id)?;
        c.name("purchase.items.category", &item.category)?;
        if item.product_id.is_empty() {
            return Err(Rejection::new(
                Reason::InvalidField,
                format!("purchase.items[{i}].product_id is missing"),
            ));
        }
        c.non_negative("purchase.items.unit_price_minor", item.unit_price_minor)?;
        if item.quantity < 1 {
            return Err(Rejection::new(
                Reason::NegativeAmount,
                format!(
                    "purchase.items[{i}].quantity is {}, must be >= 1",
                    item.quantity
                ),
            ));
        }
        items.push(LineItem {
            product_id: item.product_id,
            category: item.category,
            quantity: item.quantity,
            unit_price_minor: item.unit_price_minor,
        });
    }
    Ok(Purchase {
        order_id: p.order_id,
        items,
        total_minor: p.total_minor,
        currency: p.currency,
    })
}

fn review(c: &Checker<'_>, r: proto::Review) -> Result<Review, Rejection> {
    let rating = match u8::try_from(r.rating) {
        Ok(v @ 1..=5) => v,
        _ => {
            return Err(Rejection::new(
                Reason::InvalidRating,
                format!("review.rating is {}, must be 1 to 5", r.rating),
            ))
        }
    };
    if r.product_id.is_empty() {
        return Err(Rejection::new(
            Reason::InvalidField,
            "review.product_id is missing",
        ));
    }
    c.id("review.product_id", &r.product_id)?;
    c.name("review.category", &r.category)?;
    c.len("review.text", &r.text, c.limits.max_text_bytes)?;
    Ok(Review {
        product_id: r.product_id,
        category: r.category,
        rating,
        text: r.text,
    })
}

/// Characters an id may not contain: C0 and C1 controls, DEL, and the
/// bidirectional embedding, override and isolate marks.
fn forbidden_in_id(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// ISO 4217 alphabetic codes accepted as `purchase.currency`, sorted: the
/// active currencies and funds codes, precious metals and special drawing
/// rights, and a few recently withdrawn currencies that still appear in
/// order histories (ANG, BGN, CUC, HRK, SLL, ZWL). Not `XTS` (testing) or
/// `XXX` (no currency).
pub const ISO_4217: [&str; 181] = [
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HRK", "HTG", "HUF", "IDR",
    "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW",
    "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA",
    "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD",
    "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG",
    "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE",
    "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP",
    "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED",
    "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG",
    "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

#[cfg(test)]
mod iso_tests {
    use super::ISO_4217;

    #[test]
    fn the_currency_table_is_sorted_and_holds_three_letter_codes() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(ISO_4217
            .iter()
            .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        for known in ["EUR", "USD", "JPY", "GBP", "CHF", "BRL"] {
            assert!(ISO_4217.binary_search(&known).is_ok(), "{known}");
        }
        for unknown in ["ZZZ", "XXX", "XTS", "EURO", "eur"] {
            assert!(ISO_4217.binary_search(&unknown).is_err(), "{unknown}");
        }
    }

    #[test]
    fn ids_refuse_controls_and_bidi_marks_only() {
        for bad in [
            '\0', '\n', '\r', '\u{7f}', '\u{85}', '\u{202E}', '\u{2066}', '\u{200F}',
        ] {
            assert!(super::forbidden_in_id(bad), "{:?}", bad);
        }
        for good in ['a', '-', ' ', 'é', '中', '\u{1F600}'] {
            assert!(!super::forbidden_in_id(good), "{:?}", good);
        }
    }
}
