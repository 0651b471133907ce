//! SQuAD v1.1 / v2.0 JSON: loading (with errors that name the file and the problem) and a
//! deterministic synthetic generator so everything runs offline.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors reading or writing SQuAD files.
#[derive(Debug, thiserror::Error)]
pub enum SquadError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not well-formed SQuAD JSON.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One question with its context and answer (the first gold answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaExample {
    /// The question id.
    pub id: String,
    /// The paragraph.
    pub context: String,
    /// The question.
    pub question: String,
    /// The answer text.
    pub answer: String,
}

/// Top level of a SQuAD file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SquadFile {
    /// "v1.1" or "v2.0".
    #[serde(default)]
    pub version: Option<String>,
    /// Articles.
    pub data: Vec<Article>,
}

/// One article.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Article {
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Paragraphs.
    pub paragraphs: Vec<Paragraph>,
}

/// One paragraph with its questions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paragraph {
    /// The context text.
    pub context: String,
    /// Questions about it.
    pub qas: Vec<Qa>,
}

/// One question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Qa {
    /// Question id.
    pub id: String,
    /// Question text.
    pub question: String,
    /// Gold answers (empty for unanswerable v2.0 questions).
    #[serde(default)]
    pub answers: Vec<Answer>,
    /// SQuAD v2.0: true when the context does not answer the question.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_impossible: bool,
}

/// One answer span.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// Answer text.
    pub text: String,
    /// Character offset of the answer in the context.
    pub answer_start: usize,
}

/// Parses SQuAD JSON text; `origin` names the source in errors. Unanswerable (v2.0
/// `is_impossible`) questions are skipped, since a causal LM trained on "answer:" targets has
/// nothing to learn from them. Returns the answerable questions in file order.
pub fn parse_squad(text: &str, origin: &str) -> Result<Vec<QaExample>, SquadError> {
    let invalid = |message: String| SquadError::Invalid {
        path: origin.to_string(),
        message,
    };
    let file: SquadFile = serde_json::from_str(text).map_err(|error| {
        let what = if error.is_eof() {
            "the file is truncated (JSON ends early)"
        } else if error.is_syntax() {
            "invalid JSON"
        } else {
            "not in SQuAD format (expected {\"data\": [{\"paragraphs\": [{\"context\", \"qas\": [{\"id\", \"question\", \"answers\": [{\"text\", \"answer_start\"}]}]}]}]})"
        };
        invalid(format!("{what}: {error}"))
    })?;
    let mut examples = Vec::new();
    for (a, article) in file.data.iter().enumerate() {
        for (p, paragraph) in article.paragraphs.iter().enumerate() {
            for qa in &paragraph.qas {
                if qa.is_impossible {
                    continue;
                }
                let Some(answer) = qa.answers.first() else {
                    return Err(invalid(format!(
                        "data[{a}].paragraphs[{p}]: question {:?} has no answers and is not marked is_impossible",
                        qa.id
                    )));
                };
                examples.push(QaExample {
                    id: qa.id.clone(),
                    context: paragraph.context.clone(),
                    question: qa.question.clone(),
                    answer: answer.text.clone(),
                });
            }
        }
    }
    Ok(examples)
}

/// Reads a SQuAD file and returns its first `limit` answerable questions (all when `None`).
/// Asking for more questions than the file has is an error naming both counts.
pub fn load_squad(path: &Path, limit: Option<usize>) -> Result<Vec<QaExample>, SquadError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SquadError::Io {
        path: origin.clone(),
        source,
    })?;
    let mut examples = parse_squad(&text, &origin)?;
    if examples.is_empty() {
        return Err(SquadError::Invalid {
            path: origin,
            message: "contains no answerable questions".into(),
        });
    }
    if let Some(limit) = limit {
        if limit > examples.len() {
            return Err(SquadError::Invalid {
                path: origin,
                message: format!(
                    "has {} answerable questions but {limit} were asked for",
                    examples.len()
                ),
            });
        }
        examples.truncate(limit);
    }
    Ok(examples)
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ven", "tor", "sa", "quel", "bri", "dan", "el", "or", "fen", "gal",
    "hu", "is", "jor", "ne", "pa", "ru", "sel", "tam", "ul", "vi", "wen", "yor", "zan", "cor",
];
const GOODS: &[&str] = &[
    "copper", "salt", "wool", "timber", "glass", "silk", "honey", "iron", "amber", "tea", "wine",
    "marble", "pepper", "linen", "tin", "cheese",
];
const TRADES: &[&str] = &[
    "a fisherman",
    "a miller",
    "a blacksmith",
    "a weaver",
    "a sailor",
    "a merchant",
    "a potter",
    "a mason",
    "a baker",
    "a scribe",
];
const FEATURES: &[&str] = &[
    "a stone bridge",
    "a tall lighthouse",
    "a round tower",
    "a red market hall",
    "an old mill",
    "a quiet harbour",
    "a painted gate",
    "a great library",
];

fn name(rng: &mut impl Rng, syllables: usize) -> String {
    let mut word = String::new();
    for _ in 0..syllables {
        word.push_str(SYLLABLES.choose(rng).copied().unwrap_or("ka"));
    }
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => word,
    }
}

fn pick<'a>(rng: &mut impl Rng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or("")
}

/// Builds a synthetic SQuAD v1.1 file with `count` questions: made-up towns with founders,
/// years, exports, landmarks and rivers, one paragraph per town and up to five questions about
/// it. The same `seed` always gives the same file; `id_prefix` keeps train and dev ids apart.
pub fn synthetic_squad(count: usize, seed: u64, id_prefix: &str) -> SquadFile {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut articles = Vec::new();
    let mut made = 0usize;
    while made < count {
        let town = name(&mut rng, 2);
        let region = name(&mut rng, 3);
        let founder = format!("{} {}", name(&mut rng, 2), name(&mut rng, 2));
        let trade = pick(&mut rng, TRADES);
        let year = rng.random_range(1100..1950);
        let export = pick(&mut rng, GOODS);
        let feature = pick(&mut rng, FEATURES);
        let river = name(&mut rng, 2);
        let population = rng.random_range(300..90_000);
        let mut context = String::new();
        let mut facts: Vec<(String, String)> = Vec::new();
        let sentence = |context: &mut String, text: String| {
            if !context.is_empty() {
                context.push(' ');
            }
            context.push_str(&text);
        };
        sentence(
            &mut context,
            format!(
                "{town} is a town in the region of {region}, on the banks of the river {river}."
            ),
        );
        facts.push((format!("Which river flows through {town}?"), river.clone()));
        facts.push((format!("In which region is {town}?"), region.clone()));
        sentence(
            &mut context,
            format!("It was founded in {year} by {founder}, {trade}."),
        );
        facts.push((format!("Who founded {town}?"), founder.clone()));
        facts.push((format!("When was {town} founded?"), year.to_string()));
        sentence(
            &mut context,
            format!("The town is known for {feature}, and its main export is {export}."),
        );
        facts.push((
            format!("What is the main export of {town}?"),
            export.to_string(),
        ));
        sentence(
            &mut context,
            format!("About {population} people live there today."),
        );
        facts.push((
            format!("How many people live in {town}?"),
            population.to_string(),
        ));
        let wanted = rng.random_range(2..=5).min(count - made);
        let mut qas = Vec::new();
        for (question, answer) in facts.choose_multiple(&mut rng, wanted) {
            let answer_start = context.find(answer.as_str()).unwrap_or(0);
            qas.push(Qa {
                id: format!("{id_prefix}{made:06}"),
                question: question.clone(),
                answers: vec![Answer {
                    text: answer.clone(),
                    answer_start,
                }],
                is_impossible: false,
            });
            made += 1;
        }
        articles.push(Article {
            title: town,
            paragraphs: vec![Paragraph { context, qas }],
        });
    }
    SquadFile {
        version: Some("v1.1".into()),
        data: articles,
    }
}

/// Writes `train.json` (`train` questions) and `dev.json` (`eval` questions) into `dir`,
/// generated from `seed` (dev uses a derived seed, so its towns differ from train's).
pub fn write_synthetic_dataset(
    dir: &Path,
    train: usize,
    eval: usize,
    seed: u64,
) -> Result<(), SquadError> {
    std::fs::create_dir_all(dir).map_err(|source| SquadError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    for (file, count, file_seed, prefix) in [
        ("train.json", train, seed, "train-"),
        ("dev.json", eval, seed ^ 0x5eed_0000_dead_beef, "dev-"),
    ] {
        let path = dir.join(file);
        let squad = synthetic_squad(count, file_seed, prefix);
        let text = serde_json::to_string(&squad).map_err(|error| SquadError::Invalid {
            path: path.display().to_string(),
            message: error.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| SquadError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}
