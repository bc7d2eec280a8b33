//! Source checkout: git clone/fetch/checkout and diff apply (being written).
