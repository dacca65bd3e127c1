//! invariance losses (to be written).
