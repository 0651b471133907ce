//! The runner. (To be written.)
