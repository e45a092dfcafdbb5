//! The pure half of ebb: everything about rates and scaling that needs no Kafka, no clock
//! and no I/O, so it can be tested in milliseconds and replayed deterministically.
//!
//! - [`profile`]: the rate-profile syntax shared by the producer, the simulator and the demo;
//! - [`hpa`]: the Kubernetes HPA (autoscaling/v2) on one external metric;
//! - [`keda`]: KEDA's kafka scaler and ScaledObject loop on top of the HPA;
//! - [`scaledobject`]: reading a ScaledObject YAML into that model;
//! - [`policy`]: the policies behind one trait, `keda-lag` and ebb's `ebb-rate`;
//! - [`external`]: ebb-rate behind KEDA's external scaler protocol (`ebb keda-scaler`);
//! - [`offset_rate`]: the arrival rate from successive log-end offset readings, for every caller;
//! - [`sim`]: the simulator (service model, series) and the run summary `ebb demo` shares;
//! - [`chart`]: the run as an SVG with the reference dashboard's panels;
//! - [`scenario`]: reading scenario files (YAML text; the caller reads the file);
//! - [`tune`]: searching ScaledObject parameters for the cheapest config meeting an SLA.

pub mod chart;
pub mod external;
pub mod hpa;
pub mod keda;
pub mod offset_rate;
pub mod policy;
pub mod profile;
pub mod scaledobject;
pub mod scenario;
pub mod sim;
pub mod tune;

pub use profile::{ProfileError, RateProfile};
pub use scenario::ScenarioError;
