//! A fast reader for the shape nearly every trade has: one flat JSON object with the seven
//! fields once each, strings without escapes, plain numbers. Anything else
//! (escapes, unknown or repeated fields, nesting, exponents, trailing bytes, invalid JSON)
//! makes it give up, and the caller asks serde_json, which then also words the error.
//!
//! Why: validating every record is most of a CPU-bound consumer's work, and serde_json's
//! general machinery costs several times what this shape needs. The contract that keeps
//! the two in step: whenever [`scan`] returns a trade, serde_json reads the same trade from
//! the same bytes (a test checks it on generated and mutated records).

use std::borrow::Cow;

use super::TradeRef;

/// Reads `bytes` if it is a trade of the common shape; `None` means "ask serde_json".
pub(super) fn scan(bytes: &[u8]) -> Option<TradeRef<'_>> {
    // One UTF-8 check for the whole record; the strings are then slices of it.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut cursor = Cursor { text, bytes, at: 0 };
    let mut fields = Fields::default();
    cursor.skip_whitespace();
    cursor.expect(b'{')?;
    loop {
        cursor.skip_whitespace();
        let name = cursor.string()?.as_bytes();
        cursor.skip_whitespace();
        cursor.expect(b':')?;
        cursor.skip_whitespace();
        match name {
            b"account_id" => set(&mut fields.account_id, cursor.string()?)?,
            b"trade_id" => set(&mut fields.trade_id, cursor.string()?)?,
            b"symbol" => set(&mut fields.symbol, cursor.string()?)?,
            b"trade_type" => set(&mut fields.trade_type, cursor.string()?)?,
            b"timestamp" => set(&mut fields.timestamp, cursor.string()?)?,
            b"quantity" => {
                let digits = cursor.number()?;
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                set(&mut fields.quantity, digits.parse::<u32>().ok()?)?
            }
            b"price" => set(&mut fields.price, cursor.number()?.parse::<f64>().ok()?)?,
            _ => return None,
        }
        cursor.skip_whitespace();
        match cursor.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    cursor.skip_whitespace();
    if cursor.at != bytes.len() {
        return None;
    }
    Some(TradeRef {
        account_id: Cow::Borrowed(fields.account_id?),
        trade_id: Cow::Borrowed(fields.trade_id?),
        symbol: Cow::Borrowed(fields.symbol?),
        trade_type: Cow::Borrowed(fields.trade_type?),
        quantity: fields.quantity?,
        price: fields.price?,
        timestamp: Cow::Borrowed(fields.timestamp?),
    })
}

/// The fields seen so far.
#[derive(Default)]
struct Fields<'a> {
    account_id: Option<&'a str>,
    trade_id: Option<&'a str>,
    symbol: Option<&'a str>,
    trade_type: Option<&'a str>,
    quantity: Option<u32>,
    price: Option<f64>,
    timestamp: Option<&'a str>,
}

/// Fills a field once; a repeated field is serde_json's to report.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let length = self.bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        self.at = start + length + 1;
        if self.bytes[start + length] != b'"' {
            return None;
        }
        self.text.get(start..self.at - 1)
    }

    /// A number in JSON's grammar without an exponent: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction = self.at;
            self.skip_digits();
            if self.at == fraction {
                return None;
            }
        }
        if let Some(b'e' | b'E' | b'0'..=b'9') = self.peek() {
            return None;
        }
        self.text.get(start..self.at)
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trade::TradeGenerator;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::SystemTime;

    fn by_serde(bytes: &[u8]) -> Option<TradeRef<'_>> {
        serde_json::from_slice(bytes).ok()
    }

    fn same(a: &TradeRef<'_>, b: &TradeRef<'_>) -> bool {
        a.account_id == b.account_id
            && a.trade_id == b.trade_id
            && a.symbol == b.symbol
            && a.trade_type == b.trade_type
            && a.quantity == b.quantity
            && a.price.to_bits().abs_diff(b.price.to_bits()) <= 1
            && a.timestamp == b.timestamp
    }

    #[test]
    fn reads_every_generated_trade_as_serde_json_does() {
        let mut generator = TradeGenerator::new(Some(3));
        let (mut key, mut value) = (String::new(), Vec::new());
        for _ in 0..10_000 {
            generator.next_record(SystemTime::now(), &mut key, &mut value);
            let fast = scan(&value).expect("the producer's shape takes the fast path");
            let slow = by_serde(&value).expect("serde_json reads it");
            assert!(same(&fast, &slow), "{}", String::from_utf8_lossy(&value));
        }
    }

    #[test]
    fn reads_other_orders_whitespace_and_non_ascii() {
        let text = r#" { "price" : 12.5 ,"quantity":0, "timestamp":"t","trade_type":"X",
            "symbol":"", "trade_id":"T","account_id":"Ä" }
        "#
        .as_bytes();
        let fast = scan(text).expect("fast path");
        assert!(same(&fast, &by_serde(text).unwrap()));
        assert_eq!(fast.price, 12.5);
    }

    #[test]
    fn leaves_unusual_records_to_serde_json() {
        let base = r#""trade_id":"T","symbol":"S","trade_type":"BUY","quantity":1,"price":1.5,"timestamp":"t""#;
        for text in [
            format!(r#"{{"account_id":"A\u0041",{base}}}"#),
            format!(r#"{{"account_id":"A","extra":[1],{base}}}"#),
            format!(r#"{{"account_id":"A","account_id":"B",{base}}}"#),
            format!(r#"{{"account_id":"A",{base}}} x"#),
            format!(r#"{{{base}}}"#),
            base.replace("1.5", "1e2"),
            base.replace("1.5", "01.5"),
            base.replace("\"quantity\":1", "\"quantity\":1.0"),
            base.replace("\"quantity\":1", "\"quantity\":-1"),
            base.replace("\"quantity\":1", "\"quantity\":4294967296"),
            "[\"A\",\"T\",\"S\",\"BUY\",1,1.5,\"t\"]".to_string(),
        ] {
            assert!(scan(text.as_bytes()).is_none(), "{text}");
        }
    }

    /// Random edits of valid records: whatever the fast path accepts, serde_json accepts
    /// with the same fields.
    #[test]
    fn never_accepts_what_serde_json_reads_differently() {
        const PALETTE: &[u8] = b"\"{}[],: \t\n\\0123456789.-+eEtrufnlAZ\x01\x7f\xc3";
        let mut rng = StdRng::seed_from_u64(11);
        let mut generator = TradeGenerator::new(Some(5));
        let (mut key, mut value) = (String::new(), Vec::new());
        let mut accepted = 0;
        for _ in 0..50_000 {
            generator.next_record(SystemTime::now(), &mut key, &mut value);
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(0..value.len());
                let byte = PALETTE[rng.random_range(0..PALETTE.len())];
                match rng.random_range(0..3) {
                    0 => {
                        value.remove(at);
                    }
                    1 => value.insert(at, byte),
                    _ => value[at] = byte,
                }
            }
            if let Some(fast) = scan(&value) {
                accepted += 1;
                let slow = by_serde(&value).unwrap_or_else(|| {
                    panic!("serde_json refuses {}", String::from_utf8_lossy(&value))
                });
                assert!(same(&fast, &slow), "{}", String::from_utf8_lossy(&value));
            }
        }
        // Edits inside string values keep a record valid; the check must see such cases.
        assert!(
            accepted > 5_000,
            "only {accepted} mutated records took the fast path"
        );
    }
}
