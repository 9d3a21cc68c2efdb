//! Data: table I/O, the canonical schemas, importers, preference pairs, grading and the
//! synthetic task.

pub mod grading;
pub mod import;
pub mod io;
pub mod pairs;
pub mod schema;
pub mod synth;
