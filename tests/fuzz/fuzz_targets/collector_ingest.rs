//! The collector's ingest step: lines a host sends, checked against where
//! its stream stands. Whatever arrives, the step accepts a prefix and names
//! the first bad line, and the stream only moves forward.
#![no_main]

use guard_collector::{ingest, store::StreamState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut state = StreamState::default();
    let (_, bad) = ingest(&mut state, lines, 0);
    assert!(state.next_seq >= 1);
    if let Some(bad) = bad {
        assert!(bad.after < state.next_seq);
    }
});
