//! Tokenizers and causal-LM preprocessing of SQuAD examples.

use crate::squad::QaExample;
use std::path::Path;
use tokenizers::Tokenizer;

/// Errors building or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer could not be loaded, trained or saved.
    #[error("{path}: {message}")]
    Failed {
        /// The tokenizer file (or "training" for in-memory training).
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// End-of-sequence token of our trained tokenizers (and of BLOOM's).
pub const EOS_TOKEN: &str = "</s>";
/// Padding token of our trained tokenizers (and of BLOOM's).
pub const PAD_TOKEN: &str = "<pad>";
/// Special tokens in BLOOM's id order: `<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3.
const SPECIAL_TOKENS: [&str; 4] = ["<unk>", "<s>", EOS_TOKEN, PAD_TOKEN];

/// A tokenizer plus the ids preprocessing needs.
pub struct TextTokenizer {
    /// The Hugging Face tokenizer.
    pub tokenizer: Tokenizer,
    /// Appended after every answer.
    pub eos_id: u32,
    /// Used for padding (masked out of attention and loss).
    pub pad_id: u32,
}

impl TextTokenizer {
    /// Wraps a tokenizer; EOS/pad ids come from `</s>`/`<pad>` unless given.
    pub fn new(
        tokenizer: Tokenizer,
        eos_id: Option<u32>,
        pad_id: Option<u32>,
        origin: &str,
    ) -> Result<Self, TokenizerError> {
        let eos_id = eos_id
            .or_else(|| tokenizer.token_to_id(EOS_TOKEN))
            .ok_or_else(|| TokenizerError::Failed {
                path: origin.to_string(),
                message: format!("has no {EOS_TOKEN} token and config.json names no eos_token_id"),
            })?;
        let pad_id = pad_id
            .or_else(|| tokenizer.token_to_id(PAD_TOKEN))
            .unwrap_or(eos_id);
        Ok(Self {
            tokenizer,
            eos_id,
            pad_id,
        })
    }

    /// Loads `tokenizer.json`.
    pub fn from_file(
        path: &Path,
        eos_id: Option<u32>,
        pad_id: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        let origin = path.display().to_string();
        let tokenizer = Tokenizer::from_file(path).map_err(|error| TokenizerError::Failed {
            path: origin.clone(),
            message: format!("cannot load tokenizer: {error}"),
        })?;
        Self::new(tokenizer, eos_id, pad_id, &origin)
    }

    /// Trains a byte-level BPE tokenizer with `vocab_size` entries (including the four BLOOM
    /// special tokens and the 256 byte symbols) on `texts`, fully offline.
    pub fn train_byte_level_bpe<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self, TokenizerError> {
        use tokenizers::AddedToken;
        use tokenizers::models::TrainerWrapper;
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let failed = |message: String| TokenizerError::Failed {
            path: "training".into(),
            message,
        };
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(
                SPECIAL_TOKENS
                    .iter()
                    .map(|token| AddedToken::from(token.to_string(), true))
                    .collect(),
            )
            .build()
            .into();
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::default()));
        tokenizer
            .train(&mut trainer, texts)
            .map_err(|error| failed(format!("BPE training failed: {error}")))?;
        Self::new(tokenizer, None, None, "training")
    }

    /// Saves as `tokenizer.json` (loadable by Python's `tokenizers`).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.tokenizer
            .save(path, false)
            .map_err(|error| TokenizerError::Failed {
                path: path.display().to_string(),
                message: format!("cannot save tokenizer: {error}"),
            })
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|error| TokenizerError::Failed {
                path: "encode".into(),
                message: error.to_string(),
            })
    }

    /// Number of ids the tokenizer can produce (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// The texts a tokenizer for `examples` should be trained on.
pub fn training_texts(examples: &[QaExample]) -> Vec<String> {
    examples
        .iter()
        .map(|e| {
            format!(
                "context: {} question: {} answer: {}",
                e.context, e.question, e.answer
            )
        })
        .collect()
}

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Input ids.
    pub ids: Vec<i64>,
    /// Labels: -100 on prompt tokens, the token id on answer (+ EOS) tokens.
    pub labels: Vec<i64>,
}

/// Causal-LM encoding of a QA example:
/// `"context: {context}"` + `" question: {question} answer:"` (labels -100) then
/// `" {answer}"` + EOS (labelled). When longer than `max_length`, the context is cut (its
/// end first), then the question (its start first), then the answer (its end first), so the
/// answer tokens and the "answer:" cue survive truncation as long as possible.
pub fn encode_example(
    tokenizer: &TextTokenizer,
    example: &QaExample,
    max_length: usize,
) -> Result<Encoded, TokenizerError> {
    let mut context = tokenizer.encode(&format!("context: {}", example.context))?;
    let mut question = tokenizer.encode(&format!(" question: {} answer:", example.question))?;
    let mut answer = tokenizer.encode(&format!(" {}", example.answer))?;
    answer.push(tokenizer.eos_id);
    let max_length = max_length.max(2);
    let mut excess = (context.len() + question.len() + answer.len()).saturating_sub(max_length);
    let cut = excess.min(context.len());
    context.truncate(context.len() - cut);
    excess -= cut;
    let cut = excess.min(question.len());
    question.drain(..cut);
    excess -= cut;
    // At least one answer token stays, so every example contributes to the loss.
    let cut = excess.min(answer.len().saturating_sub(1));
    answer.truncate(answer.len() - cut);
    let prompt_len = context.len() + question.len();
    let ids: Vec<i64> = context
        .iter()
        .chain(&question)
        .chain(&answer)
        .map(|&id| id as i64)
        .collect();
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| if i < prompt_len { -100 } else { id })
        .collect();
    Ok(Encoded { ids, labels })
}

/// A padded batch ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Number of sequences.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// `batch * seq` ids.
    pub ids: Vec<i64>,
    /// `batch * seq` attention mask (1 = real token).
    pub attention_mask: Vec<u8>,
    /// `batch * seq` labels (-100 = not counted).
    pub labels: Vec<i64>,
}

impl Batch {
    /// Right-pads `examples` to the longest one (or `fixed_len` when given).
    pub fn collate(examples: &[&Encoded], pad_id: u32, fixed_len: Option<usize>) -> Self {
        let longest = examples
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let seq = fixed_len.unwrap_or(longest).max(longest);
        let batch = examples.len();
        let mut ids = vec![pad_id as i64; batch * seq];
        let mut attention_mask = vec![0u8; batch * seq];
        let mut labels = vec![-100i64; batch * seq];
        for (b, example) in examples.iter().enumerate() {
            let row = b * seq;
            ids[row..row + example.ids.len()].copy_from_slice(&example.ids);
            labels[row..row + example.labels.len()].copy_from_slice(&example.labels);
            attention_mask[row..row + example.ids.len()].fill(1);
        }
        Self {
            batch,
            seq,
            ids,
            attention_mask,
            labels,
        }
    }

    /// Number of labelled next-token positions (what the loss averages over).
    pub fn labelled_tokens(&self) -> usize {
        crate::model::shifted_targets(&self.labels, self.batch, self.seq)
            .0
            .len()
    }
}
