//! The first step of the pipeline: a [`Decoder`] turns each raw [`Record`] of a batch into
//! the record type its [`Sink`](super::sink::Sink) takes, or into the reason the record is
//! sent to the dead-letter topic instead.
//!
//! The runtime (batching, per-partition order, drained rebalances, acknowledged commits,
//! dead-lettering, retries, metrics) knows nothing of what the records mean: start it with
//! any decoder and a sink over that decoder's output ([`super::start`]). ebb's own
//! consumer uses [`TradeDecoder`](crate::trade::TradeDecoder); `examples/word_count.rs`
//! decodes lines of text.

use std::fmt::Display;

use super::batch::Record;

/// Turns a raw record into a record of the pipeline's own type, or says why it is not one.
///
/// Called on a worker task, once per record, in offset order, before the batch goes to the
/// sink; a record it rejects goes to the dead-letter topic (unchanged, with the reason in
/// its `ebb.error` header) and is committed with its batch, so the partition moves on.
/// Decoding should be pure and cheap: it is the per-record hot path, and it runs again for
/// a batch replayed after a crash or a rebalance.
///
/// [`Decoder::Output`] may borrow the record's key and value (which live in the batch's
/// buffer for as long as the batch is handled), so a decoder that only validates, or that
/// parses into borrowed fields, copies nothing:
///
/// ```
/// use ebb_core::consumer::batch::Record;
/// use ebb_core::consumer::decode::Decoder;
///
/// /// Records whose value is UTF-8 text, as that text.
/// struct Text;
///
/// impl Decoder for Text {
///     type Output<'a> = &'a str;
///     type Error = &'static str;
///
///     fn decode<'a>(&self, record: Record<'a>) -> Result<&'a str, &'static str> {
///         std::str::from_utf8(record.value.unwrap_or_default()).map_err(|_| "not UTF-8")
///     }
/// }
///
/// assert_eq!(Text.decode(Record { offset: 0, key: None, value: Some(b"hi"), timestamp_ms: None }), Ok("hi"));
/// ```
pub trait Decoder: Send + Sync + 'static {
    /// A decoded record, as the sink receives it; it may borrow from the raw record's
    /// bytes. Keep the offset in it if the sink needs it (to be idempotent, say).
    type Output<'a>: Send + Sync;
    /// Why a record was rejected; its text is the dead-letter record's `ebb.error` header.
    type Error: Display;

    /// Decodes one record of the batch.
    fn decode<'a>(&self, record: Record<'a>) -> Result<Self::Output<'a>, Self::Error>;
}
