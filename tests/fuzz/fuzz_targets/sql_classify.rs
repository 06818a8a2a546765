//! What an agent sends the database guard: any text. Classifying never
//! panics, and every statement it finds is a piece of the text sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(sql) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(statements) = guard_sql::classify(sql) {
        for statement in statements {
            assert!(sql.contains(&statement.text), "{statement:?} is not in {sql:?}");
            assert!(!statement.classes.is_empty());
        }
    }
});
