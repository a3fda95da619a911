#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway_fuzz::response_head(data));
