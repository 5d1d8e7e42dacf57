//! Shared helpers for statemesh integration tests.
