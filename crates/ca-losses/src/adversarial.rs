//! adversarial losses (to be written).
