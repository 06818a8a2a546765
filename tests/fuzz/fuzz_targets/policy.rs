//! A policy file, parsed and (when valid) compiled: any input is either
//! refused with a line and reason or compiled, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match guard_policy::policy::parse(text) {
        Ok(policy) => {
            let _ = guard_policy::compile::compile(&policy);
        }
        Err(e) => assert!(!e.reason.is_empty(), "an error without a reason"),
    }
});
