//! The Rust client of the trial protocol. (To be written.)
