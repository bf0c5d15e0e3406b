//! Pipeline configuration.

pub mod duration;
pub use duration::HumanDuration;
