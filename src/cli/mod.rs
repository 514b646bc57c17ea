//! Operator commands other than `serve`.

pub mod hash_password;
pub mod queue;
pub mod sendmail;
