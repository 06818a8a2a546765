//! What the kernel hands guardd (a ring-buffer record) and what guardd and
//! the collector read back (a line of an events file).
#![no_main]

use guard_api::record::Line;
use guard_daemon::events;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(event) = events::decode(bytes) {
        let record = events::to_record(&event, None, None, None, &events::Clock::new());
        let _ = Line::Decision(Box::new(record)).to_json();
    }
    if let Ok(line) = std::str::from_utf8(bytes) {
        let _ = Line::parse(line);
    }
});
