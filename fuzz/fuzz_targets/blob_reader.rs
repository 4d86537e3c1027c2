#![no_main]
//! Fuzz target `blob_reader`: see `sdcompress_fuzz::blob_reader`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdcompress_fuzz::blob_reader(data));
