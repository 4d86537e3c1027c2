#![no_main]
//! Fuzz target `manifest`: see `sdcompress_fuzz::manifest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdcompress_fuzz::manifest(data));
