//! reconstruction losses (to be written).
