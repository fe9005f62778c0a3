#![no_main]
//! Any text as an expression: an error or a tree whose printed form parses back to the
//! same printed form.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(e) = tilestream::parse_expr(text) {
        let printed = e.to_string();
        let again = tilestream::parse_expr(&printed).expect("printed expression parses");
        assert_eq!(again.to_string(), printed);
    }
});
