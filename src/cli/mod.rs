//! Operator commands other than `serve`.

pub mod dkim;
pub mod events;
pub mod generate;
pub mod hash_password;
pub mod queue;
pub mod route;
pub mod sendmail;
