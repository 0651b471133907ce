"""The seeds' Ray Tune script, reconstructed: BLOOM fine-tuned on SQuAD-format data with the
Hugging Face Trainer inside a TorchTrainer (ScalingConfig(num_workers=2)), a TuneReportCallback
whose on_evaluate calls train.report with a checkpoint of the Trainer, a relative
output_dir, tuned with ASHA (`python ray_seed_bloom.py asha`) or PBT (`... pbt`). Only the
imports differ from the Ray script (the commented lines).

Sized for CI by the environment (a user's script would have its numbers inline): SEED_DATA (a
directory with train.json and dev.json), SEED_STORAGE, SEED_SAMPLES, SEED_EPOCHS, and
SEED_TRACE_LR=1 to append each optimizer step's learning rates to lr_trace.jsonl in the output
directory (test_ray_seeds.py checks them). A random 2-layer BLOOM with a byte tokenizer stands
in for bigscience/bloom-560m (nothing is downloaded), on CPUs: no DeepSpeed or fp16."""

import json
import os
import sys
import tempfile

import torch
from transformers import BloomConfig, BloomForCausalLM, Trainer, TrainerCallback, TrainingArguments

# from ray import train, tune
# from ray.train import Checkpoint, RunConfig, ScalingConfig
# from ray.train.torch import TorchTrainer
# from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from rtune.ray import train, tune
from rtune.ray.train import Checkpoint, RunConfig, ScalingConfig
from rtune.ray.train.torch import TorchTrainer
from rtune.ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

DATA = os.environ.get("SEED_DATA", "data/squad")
EPOCHS = int(os.environ.get("SEED_EPOCHS", "5"))
SAMPLES = int(os.environ.get("SEED_SAMPLES", "4"))
print(f"driver: tuning with {sys.argv[1]}", flush=True)


def load_squad(path, tokens, limit):
    with open(path) as f:
        data = json.load(f)
    examples = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                prompt = tokens(f"Context: {paragraph['context']}\nQuestion: {qa['question']}\nAnswer:")
                answer = tokens(" " + qa["answers"][0]["text"]) + [2]
                examples.append({"input_ids": (prompt + answer)[-48:],
                                 "labels": ([-100] * len(prompt) + answer)[-48:]})
    return examples[:limit]


def collate(batch):
    width = max(len(b["input_ids"]) for b in batch)
    return {"input_ids": torch.tensor([b["input_ids"] + [0] * (width - len(b["input_ids"])) for b in batch]),
            "labels": torch.tensor([b["labels"] + [-100] * (width - len(b["labels"])) for b in batch]),
            "attention_mask": torch.tensor([[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"]))
                                            for b in batch])}


class TuneReportCallback(TrainerCallback):
    """Reports each evaluation with a checkpoint of the Trainer as it is now (the layout
    trainer.train(resume_from_checkpoint=...) reads)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            self.trainer.save_model(checkpoint_dir)
            torch.save(self.trainer.optimizer.state_dict(), os.path.join(checkpoint_dir, "optimizer.pt"))
            torch.save(self.trainer.lr_scheduler.state_dict(), os.path.join(checkpoint_dir, "scheduler.pt"))
            state.save_to_json(os.path.join(checkpoint_dir, "trainer_state.json"))
            train.report({"eval_loss": metrics["eval_loss"], "epoch": state.epoch},
                         checkpoint=Checkpoint.from_directory(checkpoint_dir))


class TraceLearningRate(TrainerCallback):
    def __init__(self, config):
        self.config = config

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if os.environ.get("SEED_TRACE_LR") and state.is_world_process_zero:
            with open(os.path.join(args.output_dir, "lr_trace.jsonl"), "a") as f:
                f.write(json.dumps({
                    "step": state.global_step, "epoch": state.epoch, "max_steps": state.max_steps,
                    "lr": [g["lr"] for g in optimizer.param_groups],
                    "weight_decay": [g["weight_decay"] for g in optimizer.param_groups],
                    "config": self.config, "restored": train.get_checkpoint() is not None,
                    "pid": os.getpid(),
                    "world_size": torch.distributed.get_world_size()}) + "\n")


def train_loop_per_worker(config):
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=259, hidden_size=32, n_layer=2, n_head=4,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=2))
    tokens = lambda text: [b + 3 for b in text.encode()]  # noqa: E731
    train_set = load_squad(os.path.join(DATA, "train.json"), tokens, 16)
    eval_set = load_squad(os.path.join(DATA, "dev.json"), tokens, 8)
    args = TrainingArguments(
        output_dir="bloom_pbt_out",
        num_train_epochs=EPOCHS,
        learning_rate=config["lr"],
        per_device_train_batch_size=config["per_device_bs"],
        per_device_eval_batch_size=8,
        weight_decay=config["wd"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="epoch",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collate, callbacks=[TraceLearningRate(config)])
    trainer.add_callback(TuneReportCallback(trainer))
    checkpoint = train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            trainer.train(resume_from_checkpoint=checkpoint_dir)
    else:
        trainer.train()


trainer = TorchTrainer(
    train_loop_per_worker,
    scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
)
space = {"lr": tune.loguniform(5e-6, 2e-4), "per_device_bs": tune.choice([1, 2]),
         "wd": tune.choice([0.0, 0.01])}
if sys.argv[1] == "asha":
    scheduler = ASHAScheduler(metric="eval_loss", mode="min", grace_period=1, max_t=EPOCHS,
                              reduction_factor=2)
    stop = None
else:
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", metric="eval_loss", mode="min",
        perturbation_interval=1, hyperparam_mutations={"train_loop_config": space}, synch=True)
    stop = {"training_iteration": EPOCHS}
tuner = tune.Tuner(
    trainer,
    param_space={"train_loop_config": space},
    tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=SAMPLES,
                                max_concurrent_trials=2),
    run_config=RunConfig(name=f"bloom_{sys.argv[1]}", storage_path=os.environ.get("SEED_STORAGE"),
                         stop=stop),
)
results = tuner.fit()
best = results.get_best_result(metric="eval_loss", mode="min")
print("Best Trial Result:", json.dumps({"eval_loss": best.metrics["eval_loss"],
                                        "epoch": best.metrics["epoch"], "config": best.config,
                                        "path": best.path}))
