"""A Hugging Face Trainer fine-tuning script (corpus text: linted, never run)."""

import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import datasets
import requests
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="gpt2")
    cache_dir: str = field(default=None)


@dataclass
class DataArguments:
    dataset_name: str = field(default="wikitext")
    dataset_config_name: str = field(default="wikitext-2-raw-v1")
    block_size: int = field(default=512)


def fetch_vocab_extension(url, retries=5):
    backoff = 1.0
    for attempt in range(retries):
        try:
            response = requests.get(url, timeout=30)
            response.raise_for_status()
            return response.json()
        except requests.RequestException:
            logger.warning("attempt %d failed, retrying in %.1fs", attempt, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
    return None


def main():
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if training_args.local_rank in (-1, 0):
        logger.info("Training/evaluation parameters %s", training_args)
        logger.info("WANDB project: %s", os.environ.get("WANDB_PROJECT", "none"))

    set_seed(training_args.seed)

    raw = datasets.load_dataset(
        data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False

    def tokenize(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        concatenated = {k: list(itertools.chain.from_iterable(examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // data_args.block_size) * data_args.block_size
        return {
            k: [t[i : i + data_args.block_size] for i in range(0, total, data_args.block_size)]
            for k, t in concatenated.items()
        }

    with training_args.main_process_first(desc="dataset map pre-processing"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=["text"])
        lm_datasets = tokenized.map(group_texts, batched=True)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm_datasets["train"],
        eval_dataset=lm_datasets["validation"],
        tokenizer=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    checkpoint = training_args.resume_from_checkpoint
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "README.md"), "w") as f:
            f.write(f"# {model_args.model_name_or_path} fine-tuned on {data_args.dataset_name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
