//! Statements already classified, by their exact text: drivers send the
//! same text again and again (a prepared statement per connection, the
//! same query with other parameters), and parsing costs far more than a
//! lookup. Shared by every connection of the guard.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use guard_sql::{Statement, Strings, Unparsable};

/// How many texts are kept; the cache is emptied when it is full (cheap,
/// and a working set larger than this is not what a cache helps).
const CAPACITY: usize = 4096;
/// Longer texts are not kept: they are rarely sent twice.
const MAX_TEXT: usize = 4096;

type Classified = Arc<Result<Vec<Statement>, Unparsable>>;

fn cache() -> &'static Mutex<HashMap<(Strings, String), Classified>> {
    static CACHE: OnceLock<Mutex<HashMap<(Strings, String), Classified>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// `guard_sql::classify_with`, remembered.
pub fn classify(sql: &str, strings: Strings) -> Classified {
    if sql.len() > MAX_TEXT {
        return Arc::new(guard_sql::classify_with(sql, strings));
    }
    let key = (strings, sql.to_string());
    if let Some(hit) = cache().lock().expect("lock").get(&key) {
        return hit.clone();
    }
    let classified = Arc::new(guard_sql::classify_with(sql, strings));
    let mut cache = cache().lock().expect("lock");
    if cache.len() >= CAPACITY {
        cache.clear();
    }
    cache.insert(key, classified.clone());
    classified
}
