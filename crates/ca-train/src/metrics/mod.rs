//! Evaluation metrics (to be written).
