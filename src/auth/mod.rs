//! Message authentication: DKIM signing of outbound mail (`dkim`), and SPF,
//! DKIM and DMARC checks of inbound mail from strangers (`verify`), both
//! through the mail-auth crate. Both run before the 250 that accepts a
//! message, so what is stored is what is sent.

pub mod dkim;
pub mod verify;
