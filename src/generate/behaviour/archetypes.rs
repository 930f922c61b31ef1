//! Customer archetypes: what each one does (session rates, funnels,
//! spend), the starting mix, and how they drift.

use serde::Serialize;

/// How a customer behaves at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Archetype {
    /// Frequent visits, high conversion, premium products.
    LoyalBigSpender,
    /// Steady visits and purchases at ordinary prices.
    RegularBuyer,
    /// Searches a lot, cheap products and bargain categories, removes from cart.
    BargainHunter,
    /// Long browsing sessions and wishlists, almost never buys.
    WindowShopper,
    /// Just arrived: exploring; becomes something else within weeks (or bounces).
    NewCustomer,
    /// Losing interest: decaying visits, short sessions, negative reviews, bargains.
    FadingCustomer,
    /// Gone (rare visits; may be won back).
    Churned,
}

impl Archetype {
    /// Every archetype.
    pub const ALL: [Archetype; 7] = [
        Archetype::LoyalBigSpender,
        Archetype::RegularBuyer,
        Archetype::BargainHunter,
        Archetype::WindowShopper,
        Archetype::NewCustomer,
        Archetype::FadingCustomer,
        Archetype::Churned,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Archetype::LoyalBigSpender => "loyal_big_spender",
            Archetype::RegularBuyer => "regular_buyer",
            Archetype::BargainHunter => "bargain_hunter",
            Archetype::WindowShopper => "window_shopper",
            Archetype::NewCustomer => "new_customer",
            Archetype::FadingCustomer => "fading_customer",
            Archetype::Churned => "churned",
        }
    }

    pub(super) fn params(self) -> &'static Params {
        match self {
            Archetype::LoyalBigSpender => &LOYAL,
            Archetype::RegularBuyer => &REGULAR,
            Archetype::BargainHunter => &BARGAIN,
            Archetype::WindowShopper => &WINDOW,
            Archetype::NewCustomer => &NEW,
            Archetype::FadingCustomer => &FADING,
            Archetype::Churned => &CHURNED,
        }
    }

    /// Where a customer goes after this archetype, with weights.
    pub(super) fn successors(self) -> &'static [(Archetype, f64)] {
        use Archetype::*;
        match self {
            LoyalBigSpender => &[(RegularBuyer, 0.5), (FadingCustomer, 0.5)],
            RegularBuyer => &[
                (LoyalBigSpender, 0.25),
                (FadingCustomer, 0.5),
                (BargainHunter, 0.15),
                (WindowShopper, 0.1),
            ],
            BargainHunter => &[
                (RegularBuyer, 0.3),
                (FadingCustomer, 0.5),
                (WindowShopper, 0.2),
            ],
            WindowShopper => &[(RegularBuyer, 0.2), (BargainHunter, 0.1), (Churned, 0.7)],
            NewCustomer => &[
                (RegularBuyer, 0.3),
                (LoyalBigSpender, 0.1),
                (BargainHunter, 0.1),
                (WindowShopper, 0.15),
                (Churned, 0.4),
            ],
            FadingCustomer => &[(Churned, 0.8), (RegularBuyer, 0.2)],
            Churned => &[(RegularBuyer, 0.5), (BargainHunter, 0.5)],
        }
    }
}

/// Behaviour parameters of an archetype.
pub(super) struct Params {
    /// Mean sessions per week (before seasonality).
    pub(super) sessions_per_week: f64,
    /// Mean product views per session.
    pub(super) views: f64,
    /// Chance that a view ends in a cart add.
    pub(super) cart_add: f64,
    /// Chance that a view ends in a wishlist add.
    pub(super) wishlist: f64,
    /// Chance, per cart line at the end of a session, of removing it.
    pub(super) cart_remove: f64,
    /// Chance that a session starts with a search.
    pub(super) search: f64,
    /// Chance of checking out a non-empty cart at the end of a session.
    pub(super) checkout: f64,
    /// Price level: multiplier on the category median of products looked at.
    pub(super) price_level: f64,
    /// Chance of looking at a bargain category instead of a favourite one.
    pub(super) bargain: f64,
    /// Chance of reviewing an order.
    pub(super) review: f64,
    /// Chance that a review is happy (4–5 stars) rather than lukewarm.
    pub(super) happy: f64,
    /// Chance, per order, of a bad experience (a negative review, then fading).
    pub(super) bad_experience: f64,
    /// Median time on a product page, seconds.
    pub(super) dwell_s: f64,
    /// Mean units per order line.
    pub(super) quantity: f64,
    /// Mean days before drifting to another archetype.
    pub(super) mean_days: f64,
    /// Days over which visits decay (0: no decay).
    pub(super) decay_days: f64,
}

pub(super) const LOYAL: Params = Params {
    sessions_per_week: 2.5,
    views: 5.0,
    cart_add: 0.25,
    wishlist: 0.05,
    cart_remove: 0.05,
    search: 0.3,
    checkout: 0.75,
    price_level: 1.6,
    bargain: 0.03,
    review: 0.35,
    happy: 0.9,
    bad_experience: 0.02,
    dwell_s: 45.0,
    quantity: 1.3,
    mean_days: 150.0,
    decay_days: 0.0,
};

pub(super) const REGULAR: Params = Params {
    sessions_per_week: 1.6,
    views: 4.0,
    cart_add: 0.12,
    wishlist: 0.06,
    cart_remove: 0.1,
    search: 0.35,
    checkout: 0.55,
    price_level: 0.8,
    bargain: 0.1,
    review: 0.3,
    happy: 0.8,
    bad_experience: 0.05,
    dwell_s: 35.0,
    quantity: 1.2,
    mean_days: 110.0,
    decay_days: 0.0,
};

pub(super) const BARGAIN: Params = Params {
    sessions_per_week: 2.2,
    views: 6.0,
    cart_add: 0.15,
    wishlist: 0.08,
    cart_remove: 0.3,
    search: 0.7,
    checkout: 0.45,
    price_level: 0.45,
    bargain: 0.6,
    review: 0.3,
    happy: 0.6,
    bad_experience: 0.06,
    dwell_s: 25.0,
    quantity: 1.8,
    mean_days: 100.0,
    decay_days: 0.0,
};

pub(super) const WINDOW: Params = Params {
    sessions_per_week: 1.4,
    views: 7.0,
    cart_add: 0.03,
    wishlist: 0.12,
    cart_remove: 0.5,
    search: 0.4,
    checkout: 0.05,
    price_level: 1.2,
    bargain: 0.1,
    review: 0.1,
    happy: 0.7,
    bad_experience: 0.05,
    dwell_s: 50.0,
    quantity: 1.0,
    mean_days: 45.0,
    decay_days: 0.0,
};

pub(super) const NEW: Params = Params {
    sessions_per_week: 2.0,
    views: 4.0,
    cart_add: 0.08,
    wishlist: 0.08,
    cart_remove: 0.2,
    search: 0.6,
    checkout: 0.45,
    price_level: 0.9,
    bargain: 0.15,
    review: 0.25,
    happy: 0.75,
    bad_experience: 0.05,
    dwell_s: 30.0,
    quantity: 1.1,
    mean_days: 21.0,
    decay_days: 0.0,
};

pub(super) const FADING: Params = Params {
    sessions_per_week: 1.0,
    views: 2.0,
    cart_add: 0.06,
    wishlist: 0.01,
    cart_remove: 0.45,
    search: 0.3,
    checkout: 0.3,
    price_level: 0.55,
    bargain: 0.55,
    review: 0.5,
    happy: 0.25,
    bad_experience: 0.3,
    dwell_s: 12.0,
    quantity: 1.0,
    mean_days: 21.0,
    decay_days: 7.0,
};

pub(super) const CHURNED: Params = Params {
    sessions_per_week: 0.015,
    views: 1.5,
    cart_add: 0.02,
    wishlist: 0.0,
    cart_remove: 0.5,
    search: 0.2,
    checkout: 0.2,
    price_level: 0.7,
    bargain: 0.3,
    review: 0.2,
    happy: 0.4,
    bad_experience: 0.1,
    dwell_s: 10.0,
    quantity: 1.0,
    mean_days: 150.0,
    decay_days: 0.0,
};

/// The initial mix of customers already there at the start.
pub(super) const INITIAL_MIX: [(Archetype, f64); 7] = [
    (Archetype::LoyalBigSpender, 0.12),
    (Archetype::RegularBuyer, 0.25),
    (Archetype::BargainHunter, 0.16),
    (Archetype::WindowShopper, 0.19),
    (Archetype::NewCustomer, 0.08),
    (Archetype::FadingCustomer, 0.1),
    (Archetype::Churned, 0.1),
];

/// Share of new customers who leave again within days without buying.
pub(super) const BOUNCERS: f64 = 0.35;
