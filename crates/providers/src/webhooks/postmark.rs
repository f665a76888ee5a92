//! postmark event webhook (being written).
