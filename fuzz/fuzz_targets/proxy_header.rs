//! Fuzzes the PROXY protocol header parser: any bytes give a header no
//! longer than the input, a need for more bytes, or a precise error; never
//! a panic. A header found is found again in any longer input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::server::proxy::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Header { length, source }) => {
            assert!(length <= data.len());
            assert_eq!(
                parse(&data[..length]),
                Ok(Parsed::Header { length, source })
            );
        }
        Ok(Parsed::NeedMore(more)) => assert!(more >= 1),
        Err(_) => {}
    }
});
