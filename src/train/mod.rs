//! Training a reward model: the losses ([`loss`]: Bradley–Terry and the contrastive
//! Q-function objective), contrastive position sampling ([`sampling`]), AdamW and its cosine
//! schedule ([`optim`]), the training loop ([`trainer`]) and its layer-by-layer gradient
//! checkpointing ([`checkpointing`]), the frozen-trunk cache ([`trunk`]),
//! and `qrm-train` end to end ([`run`]: pairs file → tokenised pairs → cached trunk → training →
//! checkpoint directory). Depends on [`crate::model`], not on [`crate::score`].

pub mod checkpointing;
pub mod loss;
pub mod optim;
pub mod run;
pub mod sampling;
pub mod trainer;
pub mod trunk;
