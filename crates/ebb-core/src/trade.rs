//! The trade record the reference system sends, its generator and its validation.
//!
//! Wire format (JSON, fields in this order), as the reference producer writes it:
//! `{"account_id":"ACC1000".."ACC9999","trade_id":"TRD100000".."TRD999999",
//!   "symbol":AAPL|GOOGL|MSFT|AMZN|TSLA|META|NVDA,"trade_type":"BUY"|"SELL",
//!   "quantity":1..1000,"price":50.00..500.00,"timestamp":ISO-8601 UTC}`.
//! The record key is the account id, so one account's trades keep their order.

use std::borrow::Cow;
use std::time::SystemTime;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::consumer::batch::Record;
use crate::consumer::decode::Decoder;

mod scan;

/// The symbols the reference producer draws from.
pub const SYMBOLS: [&str; 7] = ["AAPL", "GOOGL", "MSFT", "AMZN", "TSLA", "META", "NVDA"];

/// One trade, as sent on the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    /// `ACC1000`..`ACC9999`; also the record key.
    pub account_id: String,
    /// `TRD100000`..`TRD999999`.
    pub trade_id: String,
    /// One of [`SYMBOLS`].
    pub symbol: String,
    /// `BUY` or `SELL`.
    pub trade_type: String,
    /// Shares, 1..=1000.
    pub quantity: u32,
    /// Price per share, 50.00..=500.00 with two decimals.
    pub price: f64,
    /// When the trade was made, ISO-8601 in UTC.
    pub timestamp: String,
}

/// Why a record is not a valid trade (the text goes into the dead-letter header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTrade {
    /// The value is absent (a tombstone or an empty record).
    #[error("empty value")]
    Empty,
    /// Not JSON, or JSON of the wrong shape.
    #[error("not a trade: {0}")]
    Malformed(String),
    /// Well-formed, but a field is out of its range.
    #[error("invalid field {field}: {reason}")]
    Field {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A trade borrowed from a record's bytes: what validation reads, without allocating.
#[derive(Debug, Deserialize)]
pub struct TradeRef<'a> {
    /// See [`Trade::account_id`].
    #[serde(borrow)]
    pub account_id: Cow<'a, str>,
    /// See [`Trade::trade_id`].
    #[serde(borrow)]
    pub trade_id: Cow<'a, str>,
    /// See [`Trade::symbol`].
    #[serde(borrow)]
    pub symbol: Cow<'a, str>,
    /// See [`Trade::trade_type`].
    #[serde(borrow)]
    pub trade_type: Cow<'a, str>,
    /// See [`Trade::quantity`].
    pub quantity: u32,
    /// See [`Trade::price`].
    pub price: f64,
    /// See [`Trade::timestamp`].
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
}

impl<'a> TradeRef<'a> {
    /// Parses and checks a record value, borrowing from it.
    pub fn parse(value: Option<&'a [u8]>) -> Result<TradeRef<'a>, InvalidTrade> {
        let bytes = match value {
            None | Some([]) => return Err(InvalidTrade::Empty),
            Some(bytes) => bytes,
        };
        let trade = match scan::scan(bytes) {
            Some(trade) => trade,
            None => {
                serde_json::from_slice(bytes).map_err(|e| InvalidTrade::Malformed(e.to_string()))?
            }
        };
        trade.check()?;
        Ok(trade)
    }

    /// An owned copy.
    pub fn to_owned_trade(&self) -> Trade {
        Trade {
            account_id: self.account_id.to_string(),
            trade_id: self.trade_id.to_string(),
            symbol: self.symbol.to_string(),
            trade_type: self.trade_type.to_string(),
            quantity: self.quantity,
            price: self.price,
            timestamp: self.timestamp.to_string(),
        }
    }

    fn check(&self) -> Result<(), InvalidTrade> {
        let field = |field, reason: &str| {
            Err(InvalidTrade::Field {
                field,
                reason: reason.into(),
            })
        };
        if self.account_id.is_empty() {
            return field("account_id", "is empty");
        }
        if self.trade_id.is_empty() {
            return field("trade_id", "is empty");
        }
        if self.symbol.is_empty() {
            return field("symbol", "is empty");
        }
        if self.trade_type != "BUY" && self.trade_type != "SELL" {
            return field("trade_type", "must be BUY or SELL");
        }
        if self.quantity == 0 {
            return field("quantity", "must be at least 1");
        }
        if !(self.price.is_finite() && self.price > 0.0) {
            return field("price", "must be a positive number");
        }
        if humantime::parse_rfc3339_weak(self.timestamp.trim_end_matches('Z')).is_err() {
            return field("timestamp", "is not an ISO-8601 time");
        }
        Ok(())
    }
}

impl Trade {
    /// Parses and checks a record value.
    pub fn parse(value: Option<&[u8]>) -> Result<Trade, InvalidTrade> {
        TradeRef::parse(value).map(|t| t.to_owned_trade())
    }
}

/// The decoder `ebb consume` runs: a record passes if its value is a valid trade
/// ([`TradeRef::parse`]) and reaches the sink as the raw record itself, so the built-in
/// sinks see the bytes as they arrived and validation copies nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TradeDecoder;

impl Decoder for TradeDecoder {
    type Output<'a> = Record<'a>;
    type Error = InvalidTrade;

    #[inline]
    fn decode<'a>(&self, record: Record<'a>) -> Result<Record<'a>, InvalidTrade> {
        TradeRef::parse(record.value).map(|_| record)
    }
}

/// Makes random trades in the reference's ranges; seeded, it makes the same ones every run
/// (apart from the timestamp, which is the time of generation).
pub struct TradeGenerator {
    rng: StdRng,
}

impl TradeGenerator {
    /// A generator seeded with `seed`, or from the operating system when `None`.
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        TradeGenerator { rng }
    }

    /// The next trade, stamped with `now`.
    pub fn next_trade(&mut self, now: SystemTime) -> Trade {
        let rng = &mut self.rng;
        Trade {
            account_id: format!("ACC{}", rng.random_range(1000..=9999)),
            trade_id: format!("TRD{}", rng.random_range(100_000..=999_999)),
            symbol: SYMBOLS[rng.random_range(0..SYMBOLS.len())].to_string(),
            trade_type: if rng.random_bool(0.5) { "BUY" } else { "SELL" }.to_string(),
            quantity: rng.random_range(1..=1000),
            price: (rng.random_range(5000..=50000) as f64) / 100.0,
            timestamp: humantime::format_rfc3339_micros(now).to_string(),
        }
    }

    /// Writes the next trade's JSON into `value` (cleared first) and its key into `key`;
    /// reusing the buffers keeps the producer's hot path free of allocation.
    pub fn next_record(&mut self, now: SystemTime, key: &mut String, value: &mut Vec<u8>) {
        let trade = self.next_trade(now);
        key.clear();
        key.push_str(&trade.account_id);
        value.clear();
        // Serializing a struct of strings and numbers into a Vec cannot fail.
        serde_json::to_writer(&mut *value, &trade).expect("trade serializes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_trades_are_in_the_reference_ranges() {
        let mut generator = TradeGenerator::new(Some(7));
        for _ in 0..10_000 {
            let t = generator.next_trade(SystemTime::now());
            let account: u32 = t.account_id[3..].parse().unwrap();
            let id: u32 = t.trade_id[3..].parse().unwrap();
            assert!(t.account_id.starts_with("ACC") && (1000..=9999).contains(&account));
            assert!(t.trade_id.starts_with("TRD") && (100_000..=999_999).contains(&id));
            assert!(SYMBOLS.contains(&t.symbol.as_str()));
            assert!(t.trade_type == "BUY" || t.trade_type == "SELL");
            assert!((1..=1000).contains(&t.quantity));
            assert!((50.0..=500.0).contains(&t.price));
            assert_eq!((t.price * 100.0).round() / 100.0, t.price);
            assert!(t.timestamp.ends_with('Z'));
        }
    }

    #[test]
    fn same_seed_same_trades() {
        let now = SystemTime::now();
        let mut a = TradeGenerator::new(Some(42));
        let mut b = TradeGenerator::new(Some(42));
        let mut c = TradeGenerator::new(Some(43));
        let xs: Vec<_> = (0..100).map(|_| a.next_trade(now)).collect();
        let ys: Vec<_> = (0..100).map(|_| b.next_trade(now)).collect();
        let zs: Vec<_> = (0..100).map(|_| c.next_trade(now)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn record_round_trips_and_keeps_field_order() {
        let mut generator = TradeGenerator::new(Some(1));
        let (mut key, mut value) = (String::new(), Vec::new());
        generator.next_record(SystemTime::now(), &mut key, &mut value);
        let text = std::str::from_utf8(&value).unwrap();
        let order = [
            "account_id",
            "trade_id",
            "symbol",
            "trade_type",
            "quantity",
            "price",
            "timestamp",
        ];
        let positions: Vec<_> = order.iter().map(|f| text.find(f).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        let trade = Trade::parse(Some(&value)).unwrap();
        assert_eq!(trade.account_id, key);
    }

    #[test]
    fn invalid_records_say_why() {
        assert_eq!(Trade::parse(None), Err(InvalidTrade::Empty));
        assert_eq!(Trade::parse(Some(b"")), Err(InvalidTrade::Empty));
        assert!(matches!(
            Trade::parse(Some(b"not json")),
            Err(InvalidTrade::Malformed(_))
        ));
        assert!(matches!(
            Trade::parse(Some(b"{\"a\":1}")),
            Err(InvalidTrade::Malformed(_))
        ));
        let sell_short = br#"{"account_id":"ACC1","trade_id":"TRD1","symbol":"X","trade_type":"SHORT","quantity":1,"price":1.0,"timestamp":"2025-01-01T00:00:00Z"}"#;
        assert!(matches!(
            Trade::parse(Some(sell_short)),
            Err(InvalidTrade::Field {
                field: "trade_type",
                ..
            })
        ));
        let python_style = br#"{"account_id":"ACC1","trade_id":"TRD1","symbol":"X","trade_type":"BUY","quantity":1,"price":1.0,"timestamp":"2025-12-30T16:12:06.123456"}"#;
        assert!(Trade::parse(Some(python_style)).is_ok());
    }
}
