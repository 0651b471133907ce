//! Data, tokenizer, schedule, training and checkpoint behaviour on a tiny model.

use burn::prelude::*;
use rtune_trainer::config::BloomConfig;
use rtune_trainer::data::{Encoded, TextTokenizer, encode_example, training_texts};
use rtune_trainer::model::Bloom;
use rtune_trainer::squad::{
    QaExample, load_squad, parse_squad, synthetic_squad, write_synthetic_dataset,
};
use rtune_trainer::train::{Hyperparameters, Trainer};

fn examples(count: usize, seed: u64) -> Vec<QaExample> {
    let squad = synthetic_squad(count, seed, "t-");
    let text = serde_json::to_string(&squad).expect("serialize");
    parse_squad(&text, "memory").expect("parse")
}

struct Prepared {
    tokenizer: TextTokenizer,
    train: Vec<Encoded>,
    eval: Vec<Encoded>,
}

fn prepare(train_count: usize, eval_count: usize) -> Prepared {
    let train_examples = examples(train_count, 1);
    let eval_examples = examples(eval_count, 2);
    let texts = training_texts(&train_examples);
    let tokenizer =
        TextTokenizer::train_byte_level_bpe(texts.iter().map(String::as_str), 320).expect("bpe");
    let encode = |list: &[QaExample]| -> Vec<Encoded> {
        list.iter()
            .map(|e| encode_example(&tokenizer, e, 96).expect("encode"))
            .collect()
    };
    let train = encode(&train_examples);
    let eval = encode(&eval_examples);
    Prepared {
        tokenizer,
        train,
        eval,
    }
}

fn tiny_config(vocab: usize) -> BloomConfig {
    BloomConfig::new(2, 32, 4, vocab)
}

fn hyperparameters() -> Hyperparameters {
    Hyperparameters {
        lr: 3e-3,
        weight_decay: 0.01,
        per_device_bs: 4,
        grad_accum: 2,
        epochs: 3,
        warmup_ratio: 0.1,
        seed: 7,
        max_grad_norm: 1.0,
    }
}

fn trainer(vocab: usize, hp: Hyperparameters) -> Trainer {
    let device = Device::flex().autodiff();
    let config = tiny_config(vocab);
    let model = Bloom::random(&config, hp.seed, &device);
    Trainer::new(config, model, hp, device).expect("trainer")
}

#[test]
fn synthetic_squad_is_deterministic_and_answers_are_in_context() {
    let a = serde_json::to_string(&synthetic_squad(30, 5, "x-")).expect("json");
    let b = serde_json::to_string(&synthetic_squad(30, 5, "x-")).expect("json");
    let c = serde_json::to_string(&synthetic_squad(30, 6, "x-")).expect("json");
    assert_eq!(a, b);
    assert_ne!(a, c);
    let parsed = examples(30, 5);
    assert_eq!(parsed.len(), 30);
    for example in &parsed {
        assert!(example.context.contains(&example.answer), "{example:?}");
    }
}

#[test]
fn broken_squad_files_give_errors_naming_file_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_synthetic_dataset(dir.path(), 20, 5, 3).expect("write");
    let train = dir.path().join("train.json");
    assert_eq!(load_squad(&train, Some(20)).expect("load").len(), 20);
    assert_eq!(load_squad(&train, Some(7)).expect("load").len(), 7);
    let too_many = load_squad(&train, Some(21))
        .expect_err("too many")
        .to_string();
    assert!(
        too_many.contains("train.json")
            && too_many.contains("20 answerable")
            && too_many.contains("21"),
        "{too_many}"
    );

    let text = std::fs::read_to_string(&train).expect("read");
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).expect("write");
    let message = load_squad(&truncated, None)
        .expect_err("truncated")
        .to_string();
    assert!(
        message.contains("truncated.json") && message.contains("truncated"),
        "{message}"
    );

    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, r#"{"data": [{"paragraphs": [{"qas": []}]}]}"#).expect("write");
    let message = load_squad(&wrong, None)
        .expect_err("wrong shape")
        .to_string();
    assert!(
        message.contains("wrong.json") && message.contains("context"),
        "{message}"
    );

    let missing = load_squad(&dir.path().join("nope.json"), None)
        .expect_err("missing")
        .to_string();
    assert!(missing.contains("nope.json"), "{missing}");
}

#[test]
fn squad_v2_unanswerable_questions_are_skipped() {
    let text = r#"{"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "A b c.",
        "qas": [{"id": "1", "question": "q?", "answers": [{"text": "b", "answer_start": 2}]},
                {"id": "2", "question": "r?", "answers": [], "is_impossible": true}]}]}]}"#;
    let parsed = parse_squad(text, "v2.json").expect("parse");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].answer, "b");
}

#[test]
fn preprocessing_labels_only_the_answer_and_truncation_keeps_it() {
    let prepared = prepare(40, 4);
    let example = &examples(1, 9)[0];
    let encoded = encode_example(&prepared.tokenizer, example, 512).expect("encode");
    let answer = prepared
        .tokenizer
        .encode(&format!(" {}", example.answer))
        .expect("encode");
    let labelled: Vec<i64> = encoded
        .labels
        .iter()
        .copied()
        .filter(|&l| l != -100)
        .collect();
    let mut expected: Vec<i64> = answer.iter().map(|&t| t as i64).collect();
    expected.push(prepared.tokenizer.eos_id as i64);
    assert_eq!(labelled, expected);
    assert_eq!(encoded.ids.len(), encoded.labels.len());
    assert_eq!(
        &encoded.ids[encoded.ids.len() - expected.len()..],
        expected.as_slice()
    );

    let short = encode_example(&prepared.tokenizer, example, 24).expect("encode");
    assert_eq!(short.ids.len(), 24);
    let labelled: Vec<i64> = short
        .labels
        .iter()
        .copied()
        .filter(|&l| l != -100)
        .collect();
    assert_eq!(labelled, expected, "answer survives truncation");
}

#[test]
fn tokenizer_round_trips_through_tokenizer_json() {
    let prepared = prepare(20, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    prepared.tokenizer.save(&path).expect("save");
    let loaded = TextTokenizer::from_file(&path, None, None).expect("load");
    let text = "context: Kalo is a town. question: Who? answer: Mira";
    assert_eq!(
        loaded.encode(text).expect("a"),
        prepared.tokenizer.encode(text).expect("b")
    );
    assert_eq!(loaded.eos_id, 2);
    assert_eq!(loaded.pad_id, 3);
    assert!(prepared.tokenizer.vocab_size() <= 320);
}

#[test]
fn linear_schedule_with_warmup_matches_hf() {
    let hp = Hyperparameters {
        lr: 1.0,
        warmup_ratio: 0.2,
        ..Hyperparameters::default()
    };
    // total 10, warmup ceil(2) = 2: 0, 0.5, then (10 - s) / 8.
    let lrs: Vec<f64> = (0..10).map(|s| hp.lr_at(s, 10)).collect();
    let expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
    for (a, e) in lrs.iter().zip(expected) {
        assert!((a - e).abs() < 1e-12, "{lrs:?}");
    }
    let no_warmup = Hyperparameters {
        lr: 2.0,
        ..Hyperparameters::default()
    };
    assert_eq!(no_warmup.lr_at(0, 4), 2.0);
    assert_eq!(no_warmup.lr_at(3, 4), 0.5);
    assert_eq!(
        Hyperparameters {
            per_device_bs: 2,
            grad_accum: 2,
            ..Hyperparameters::default()
        }
        .steps_per_epoch(9),
        3
    );
}

#[test]
fn training_lowers_eval_loss() {
    let prepared = prepare(48, 12);
    let mut trainer = trainer(prepared.tokenizer.vocab_size(), hyperparameters());
    let pad = prepared.tokenizer.pad_id;
    let before = trainer.evaluate(&prepared.eval, pad);
    let mut last = before;
    for _ in 0..3 {
        last = trainer
            .run_epoch(&prepared.train, &prepared.eval, pad)
            .expect("epoch")
            .eval_loss;
    }
    assert!(last.is_finite());
    assert!(last < before - 0.5, "eval_loss {before} -> {last}");
    assert_eq!(trainer.epoch, 3);
    assert_eq!(trainer.step, 3 * 6);
}

#[test]
fn checkpoint_restore_gives_identical_loss_and_continues_exactly() {
    let prepared = prepare(24, 8);
    let pad = prepared.tokenizer.pad_id;
    let vocab = prepared.tokenizer.vocab_size();
    let mut original = trainer(vocab, hyperparameters());
    original
        .run_epoch(&prepared.train, &prepared.eval, pad)
        .expect("epoch 1");
    let dir = tempfile::tempdir().expect("tempdir");
    original
        .save_checkpoint(
            dir.path(),
            Some(&prepared.tokenizer),
            serde_json::Map::new(),
        )
        .expect("save");
    let device = Device::flex().autodiff();
    let mut restored = Trainer::restore(dir.path(), hyperparameters(), device).expect("restore");
    assert_eq!(
        (restored.epoch, restored.step),
        (original.epoch, original.step)
    );
    assert_eq!(
        restored.evaluate(&prepared.eval, pad),
        original.evaluate(&prepared.eval, pad),
        "identical loss after save + load"
    );
    let next_original = original
        .run_epoch(&prepared.train, &prepared.eval, pad)
        .expect("epoch 2");
    let next_restored = restored
        .run_epoch(&prepared.train, &prepared.eval, pad)
        .expect("epoch 2");
    assert_eq!(next_original, next_restored, "training continues exactly");
    // The checkpoint is also a model dir.
    assert!(dir.path().join("tokenizer.json").is_file());
    assert!(dir.path().join("config.json").is_file());
}
