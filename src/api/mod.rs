//! ClearML API client (being written).
