//! ses event webhook (being written).
