//! Health probes against local servers: kinds, timeouts, rise and fall.

mod health_probe;
