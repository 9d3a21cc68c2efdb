//! What a `qrm-train` checkpoint directory holds besides the weights, as far as loading it for
//! scoring needs: the training record's file name, the resumable state's folder, and the
//! encoding the model was trained with. The whole record ([`crate::train::run::TrainingRecord`])
//! flattens [`EncodingRecord`] into it, so both describe one file with one definition of these
//! fields.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The training record's file name inside a checkpoint directory, written last by `qrm-train`:
/// a directory that has it is complete.
pub const TRAINING_RECORD: &str = "train_config.json";

/// The folder of a run's resumable state, under its output directory.
pub const STATE_DIR: &str = "state";

/// The prompt template, EOS policy and longest sequence a model was trained with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodingRecord {
    /// A template name (`chatml`, `raw`, ...) or the path of a template file.
    pub template: String,
    /// `append` or `none`.
    pub eos: String,
    pub max_len: usize,
}

impl EncodingRecord {
    /// The encoding recorded in `directory`'s training record, or `None` when the directory
    /// has none (a plain transformers/OpenRLHF/TRL model, a GGUF file).
    pub fn read(directory: &Path) -> Result<Option<EncodingRecord>> {
        let path = directory.join(TRAINING_RECORD);
        if !directory.is_dir() || !path.exists() {
            return Ok(None);
        }
        let text = fs_err::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Format {
                path,
                message: format!("not a qrm training record: {e}"),
            })
    }
}
