//! info losses (to be written).
