//! The whole synchronous query path from raw bytes: guard parsing, error answers, cache key,
//! the query sent upstream, and answers normalized and rendered from upstream responses.
//! See `dot_proxy_testkit::fuzz::query_path` for what is asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dot_proxy_testkit::fuzz::query_path(data);
});
