//! Fuzz target: a run config (TOML) with `--set` overrides, validated; an accepted config
//! must survive its own round trip through `config.toml` unchanged.
//!
//! Input: TOML text, then optionally a NUL byte and `--set` arguments, one per line.
#![no_main]

use ca_train::config::RunConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, sets) = text.split_once('\0').unwrap_or((text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    let Ok(cfg) = RunConfig::from_toml(toml, "fuzz.toml", &sets) else {
        return;
    };
    let saved = cfg.to_toml();
    let back = RunConfig::from_toml(&saved, "saved", &[])
        .unwrap_or_else(|e| panic!("an accepted config does not re-read: {e}\n{saved}"));
    assert_eq!(cfg, back, "round trip changed the config:\n{saved}");
    assert_eq!(cfg.model_digest(), back.model_digest());
    let _ = cfg.data.common();
});
