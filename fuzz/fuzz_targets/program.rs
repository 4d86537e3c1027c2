#![no_main]
//! Fuzz target `program`: see `sdcompress_fuzz::program`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdcompress_fuzz::program(data));
