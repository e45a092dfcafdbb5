//! The pure half of ebb: everything about rates and scaling that needs no Kafka, no clock
//! and no I/O, so it can be tested in milliseconds and replayed deterministically.
//!
//! - [`profile`]: the rate-profile syntax shared by the producer, the simulator and the demo;
//! - [`scenario`]: reading scenario files (YAML text; the caller reads the file).

pub mod profile;
pub mod scenario;

pub use profile::{ProfileError, RateProfile};
pub use scenario::ScenarioError;
