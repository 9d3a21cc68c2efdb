//! Data: table I/O, the canonical schemas, importers, preference pairs, grading and the
//! synthetic task.

pub mod io;
pub mod schema;
pub mod synth;
