#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| laneway_fuzz::consul_register(data));
