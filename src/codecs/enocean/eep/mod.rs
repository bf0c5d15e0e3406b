//! Placeholder: being written (issue 3).

/// Temporary until the profile tables land: no profile is known.
pub fn lookup(_eep: &str) -> Option<()> {
    None
}
