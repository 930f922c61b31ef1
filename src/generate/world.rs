//! The fixed parts of the synthetic world: categories and their prices,
//! products, the review vocabulary, weekly seasonality, and the seeded
//! random stream every choice is drawn from.

/// Milliseconds in a day.
pub use crate::units::DAY_MS;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

pub use crate::rng::{mix, Rng};

/// A product category: its name, the median price of its products in minor
/// units, and whether bargain hunters (and fading customers) drift to it.
#[derive(Debug, Clone, Copy)]
pub struct Category {
    /// Name as it appears in events.
    pub name: &'static str,
    /// Median unit price in minor units.
    pub median_price: f64,
    /// A discount / low-price category.
    pub bargain: bool,
}

const fn cat(name: &'static str, euros: f64, bargain: bool) -> Category {
    Category {
        name,
        median_price: euros * 100.0,
        bargain,
    }
}

/// The catalogue's categories.
pub const CATEGORIES: [Category; 36] = [
    cat("electronics", 120.0, false),
    cat("phones", 260.0, false),
    cat("computers", 420.0, false),
    cat("audio", 80.0, false),
    cat("cameras", 240.0, false),
    cat("gaming", 55.0, false),
    cat("books", 14.0, false),
    cat("music", 12.0, false),
    cat("movies", 11.0, false),
    cat("toys", 25.0, false),
    cat("baby", 30.0, false),
    cat("fashion_women", 45.0, false),
    cat("fashion_men", 40.0, false),
    cat("shoes", 70.0, false),
    cat("jewelry", 95.0, false),
    cat("watches", 150.0, false),
    cat("beauty", 22.0, false),
    cat("health", 18.0, false),
    cat("sports", 45.0, false),
    cat("outdoor", 60.0, false),
    cat("fitness", 35.0, false),
    cat("home_decor", 30.0, false),
    cat("furniture", 210.0, false),
    cat("kitchen", 38.0, false),
    cat("garden", 33.0, false),
    cat("tools", 48.0, false),
    cat("automotive", 42.0, false),
    cat("travel", 85.0, false),
    cat("pet_supplies", 16.0, true),
    cat("groceries", 7.0, true),
    cat("office", 12.0, true),
    cat("stationery", 6.0, true),
    cat("crafts", 10.0, true),
    cat("party_supplies", 8.0, true),
    cat("outlet", 15.0, true),
    cat("clearance", 9.0, true),
];

/// Products per category.
pub const PRODUCTS_PER_CATEGORY: usize = 80;

/// Indices of the bargain categories.
pub fn bargain_categories() -> Vec<usize> {
    (0..CATEGORIES.len())
        .filter(|&i| CATEGORIES[i].bargain)
        .collect()
}

/// A product: id and unit price (deterministic from category and index).
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Category index into [`CATEGORIES`].
    pub category: usize,
    /// Index within the category.
    pub index: usize,
}

impl Product {
    /// Product id as it appears in events, e.g. `p03-017`.
    pub fn id(&self) -> String {
        format!("p{:02}-{:03}", self.category, self.index)
    }

    /// Category name.
    pub fn category_name(&self) -> &'static str {
        CATEGORIES[self.category].name
    }

    /// The product's log-price offset from its category median (a fixed
    /// standard-normal draw per product), so prices are log-normal.
    pub fn price_tier(&self) -> f64 {
        let mut r = Rng::new(mix((self.category as u64) << 20 | self.index as u64));
        r.normal()
    }

    /// Unit price in minor units, ending in 99.
    pub fn price_minor(&self) -> i64 {
        let c = &CATEGORIES[self.category];
        let raw = c.median_price * (0.55 * self.price_tier()).exp();
        let whole = (raw / 100.0).round().max(1.0) as i64;
        whole * 100 - 1
    }
}

/// Picks a product of `category` near the customer's price level (a
/// multiplier on the category median: > 1 premium, < 1 cheap), favouring
/// popular (low-index) products.
pub fn pick_product(rng: &mut Rng, category: usize, price_level: f64) -> Product {
    let target = price_level.max(0.05).ln() / 0.55;
    let mut best: Option<(f64, Product)> = None;
    for _ in 0..4 {
        let u = rng.unit();
        let index = ((u * u) * PRODUCTS_PER_CATEGORY as f64) as usize;
        let p = Product {
            category,
            index: index.min(PRODUCTS_PER_CATEGORY - 1),
        };
        let d = (p.price_tier() - target).abs() + rng.range(0.0, 0.6);
        if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, p));
        }
    }
    best.map(|(_, p)| p)
        .unwrap_or(Product { category, index: 0 })
}

/// Words and phrases that make a review read positive.
pub const POSITIVE_WORDS: [&str; 14] = [
    "great",
    "excellent",
    "love",
    "perfect",
    "recommend",
    "happy",
    "amazing",
    "fast delivery",
    "high quality",
    "works well",
    "fantastic",
    "comfortable",
    "beautiful",
    "good value",
];

/// Words and phrases that make a review read negative.
pub const NEGATIVE_WORDS: [&str; 14] = [
    "broken",
    "terrible",
    "refund",
    "disappointed",
    "poor",
    "waste",
    "never again",
    "arrived late",
    "cheap plastic",
    "returned",
    "awful",
    "useless",
    "damaged",
    "worst",
];

/// Neutral filler.
pub const NEUTRAL_WORDS: [&str; 8] = [
    "okay",
    "average",
    "as described",
    "fine",
    "decent",
    "expected more",
    "not bad",
    "standard",
];

const NOUNS: [&str; 6] = ["product", "item", "purchase", "order", "one", "thing"];

/// A review text whose sentiment matches `rating` (1–5): mostly negative
/// words for 1–2 stars, neutral for 3, positive for 4–5, with an occasional
/// word of the other kind so the text is not a pure function of the rating.
pub fn review_text(rng: &mut Rng, rating: u8) -> String {
    let (main, other): (&[&str], &[&str]) = match rating {
        1 | 2 => (&NEGATIVE_WORDS, &NEUTRAL_WORDS),
        3 => (&NEUTRAL_WORDS, &POSITIVE_WORDS),
        _ => (&POSITIVE_WORDS, &NEUTRAL_WORDS),
    };
    let n = 2 + rng.below(3);
    let mut words: Vec<&str> = Vec::with_capacity(n + 2);
    for i in 0..n {
        if i > 0 && rng.chance(0.12) {
            words.push(other[rng.below(other.len())]);
        } else {
            words.push(main[rng.below(main.len())]);
        }
    }
    let noun = NOUNS[rng.below(NOUNS.len())];
    let mut text = format!("{} {noun}", words[0]);
    for w in &words[1..] {
        text.push_str(", ");
        text.push_str(w);
    }
    if rating == 5 && rng.chance(0.4) {
        text.push('!');
    } else {
        text.push('.');
    }
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().collect::<String>() + chars.as_str(),
        None => text,
    }
}

/// The sentiment of a text under the generator's vocabularies: positive
/// phrases minus negative ones (used by tests and by anyone checking the
/// data).
pub fn sentiment(text: &str) -> i32 {
    let t = text.to_lowercase();
    let pos = POSITIVE_WORDS.iter().filter(|w| t.contains(*w)).count() as i32;
    let neg = NEGATIVE_WORDS.iter().filter(|w| t.contains(*w)).count() as i32;
    pos - neg
}

/// Relative activity by day of week (Monday first): weekends are busier.
const WEEKDAY: [f64; 7] = [0.85, 0.85, 0.9, 0.95, 1.1, 1.35, 1.3];

/// Relative activity by hour of day (UTC): quiet nights, busy evenings.
const HOURLY: [f64; 24] = [
    0.25, 0.15, 0.1, 0.1, 0.1, 0.15, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.0, 0.95, 0.95, 1.0, 1.1,
    1.3, 1.5, 1.5, 1.35, 1.0, 0.6,
];

/// Upper bound of [`seasonality`] (for thinning).
pub const SEASONALITY_MAX: f64 = 1.35 * 1.5;

/// The activity multiplier at `t_ms` (weekly and daily cycles).
pub fn seasonality(t_ms: i64) -> f64 {
    let days = t_ms.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let hour = (t_ms.rem_euclid(DAY_MS) / HOUR_MS) as usize;
    WEEKDAY[weekday] * HOURLY[hour.min(23)]
}

/// Day-of-week index (Monday = 0) of `t_ms`.
pub fn weekday(t_ms: i64) -> usize {
    (t_ms.div_euclid(DAY_MS) + 3).rem_euclid(7) as usize
}
