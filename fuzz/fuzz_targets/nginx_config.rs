#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway_fuzz::nginx_config(data));
