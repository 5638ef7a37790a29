#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data; // filled in by the target's owner
});
