//! porthole's integration tests: one binary (as ripgrep does), modules by area.

// Test helpers may panic freely: a panic is a test failure with a message.
#![allow(clippy::unwrap_used)]

mod access;
mod cli;
mod fuzz_corpus;
mod hardening;
mod install;
mod load;
mod manual;
mod natlab;
mod nodepass;
mod observe;
mod process;
mod proxy;
mod proxy_protocol;
mod publish;
mod resume;
mod secrets;
mod support;
mod tunnel;
mod upgrade;
