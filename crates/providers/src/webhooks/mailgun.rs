//! mailgun event webhook (being written).
