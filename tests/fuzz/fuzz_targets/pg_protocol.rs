//! What a client sends the statement guard: any bytes. The startup packet
//! and every message after it are decoded without a panic, and a decoded
//! statement is exactly the text inside the message the guard forwards.
#![no_main]

use guard_pg::protocol::{Frontend, Message, Startup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&split, rest)) = bytes.split_first() else {
        return;
    };
    let (startup, mut messages) = rest.split_at((split as usize).min(rest.len()));
    let _ = Startup::decode(startup.to_vec());
    while messages.len() >= 5 {
        let len = i32::from_be_bytes(messages[1..5].try_into().unwrap());
        let Ok(len) = usize::try_from(len) else { return };
        if len < 4 || len + 1 > messages.len() {
            return;
        }
        let message = Message {
            bytes: messages[..len + 1].to_vec(),
        };
        messages = &messages[len + 1..];
        let text = match Frontend::decode(&message) {
            Ok(Frontend::Query(sql)) => sql,
            Ok(Frontend::Parse { query, .. }) => query,
            _ => continue,
        };
        let body = message.body();
        assert!(
            body.windows(text.len().max(1)).any(|w| w == text.as_bytes()) || text.is_empty(),
            "{text:?} is not in the message"
        );
    }
});
