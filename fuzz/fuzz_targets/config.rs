//! `Config::parse` on arbitrary text: errors are fine, panics are not.
//! A configuration that parses is also asked what the proxy asks of it at
//! start-up (its lock group, its parser limits).
//!
//! Run with the dictionary of config keys so the fuzzer gets past TOML
//! syntax: `cargo +nightly fuzz run config -- -dict=fuzz/config.dict`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardis::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = Config::parse(text) {
        let _ = cfg.lock_group();
        let _ = cfg.parser_limits();
    }
});
