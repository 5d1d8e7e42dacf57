//! Example binaries for statemesh.
