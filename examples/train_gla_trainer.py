"""Fine-tune (or train from scratch) a small GLA with the Hugging Face Trainer on a local text file.

    python examples/train_gla_trainer.py                      # the stdlib's pydoc topics as the corpus
    python examples/train_gla_trainer.py --text my.txt --steps 500 --out runs/gla

The text is loaded with `datasets` ("text" builder on a local file), tokenized as UTF-8 bytes (vocabulary 256),
and cut into fixed-length blocks. Any checkpoint saved by hf-seqmodels can be passed with --model to continue.
"""

import argparse
import os
import tempfile

from datasets import load_dataset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

import hf_seqmodels
from hf_seqmodels.data import default_text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", help="a UTF-8 text file (default: pydoc topics)")
    ap.add_argument("--model", help="an hf-seqmodels checkpoint folder to continue from (default: a new small GLA)")
    ap.add_argument("--out", default="runs/gla-trainer")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()

    path = args.text
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "pydoc_topics.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(default_text())
    raw = load_dataset("text", data_files={"train": path}, split="train", keep_linebreaks=True)
    raw = raw.train_test_split(test_size=0.05, seed=0)

    def to_blocks(batch):
        ids = list("".join(batch["text"]).encode("utf-8"))
        n = len(ids) // args.block_size * args.block_size
        blocks = [ids[i : i + args.block_size] for i in range(0, n, args.block_size)]
        return {"input_ids": blocks, "labels": [b[:] for b in blocks]}

    data = raw.map(to_blocks, batched=True, remove_columns=["text"])

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        config = hf_seqmodels.GLAConfig(
            vocab_size=256,
            hidden_size=128,
            num_hidden_layers=4,
            num_heads=4,
            use_short_conv=True,
            bos_token_id=None,
            eos_token_id=None,
        )
        model = AutoModelForCausalLM.from_config(config)

    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.steps // 20),
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=max(10, args.steps // 4),
        save_strategy="no",
        report_to=[],
        use_cpu=not __import__("torch").cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        data_collator=default_data_collator,
    )
    trainer.train()
    metrics = trainer.evaluate()
    print(f"held-out loss {metrics['eval_loss']:.3f} nats/byte")
    trainer.save_model(args.out)
    print(f"saved to {args.out}; reload with AutoModelForCausalLM.from_pretrained after `import hf_seqmodels`")


if __name__ == "__main__":
    main()
