//! Search spaces. (To be written: see the core helper's task.)
