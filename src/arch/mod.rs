//! Architecture support. flint runs x86_64 guests on x86_64 hosts only.

pub mod x86_64;
