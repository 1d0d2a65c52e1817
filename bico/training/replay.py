"""Replay: general text trained with plain next-token prediction beside the objective, so that a
finetune on a few facts does not overwrite what the model knew (rehearsal).

``replay.source: self`` samples the text from the model itself *before* finetuning (from its
document-separator token, temperature and top-p sampling), so no outside data is needed: next-token
loss on the base model's own samples is a Monte-Carlo estimate of KL(base || tuned) on the base's
distribution, plus a constant, i.e. it pulls the tuned model back towards the base where the base
puts its mass. A path instead names a ``.txt`` (documents separated by blank lines) or ``.jsonl``
(a ``text`` field per row) file, cut into pieces of ``replay.length`` tokens.

``replay.prompts`` makes each sample a continuation of an opening instead (``generic``: bico's
shipped openings of expository English, "The", "The history of", "The city of", …; or a file of
them), so that the replay text has the shapes the base model writes facts in ("X is …"), which a
finetune on "A is B" facts otherwise overwrites.

Samples that contain a prompt of the retention knowledge set or share a run of
:data:`PROSE_RUN` words with its prose sample are dropped (counted in the log), so the retention
scores never measure text that was trained on. Self-samples are cached under
``$BICO_CACHE/replay``, keyed on the model and the sampling settings.

``replay.loss: kl`` trains, instead of the sampled tokens, the base model's own next-token
distribution at every replay position (KL(base || tuned) over the base's ``replay.top_k`` most
likely tokens and the rest of the vocabulary as one outcome: distillation). Repeated over many epochs, next-token loss lets the model memorise
the few replay texts (their loss falls below the base's); the KL cannot go below zero, so it keeps
pulling towards the base and never towards the samples. The base's top-k is computed once, by a
fresh load of the model before finetuning, and cached beside the samples.

Each optimizer step, every micro-batch of the objective gets ``replay.rows`` replay rows (drawn by
``(train.seed, step, micro)``, so resume replays them exactly) in a second forward pass; the step's
loss is the objective's mean loss plus ``replay.weight`` x the mean loss over the step's replay
tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bico.collate import collate
from bico.errors import BicoError
from bico.objectives.base import Example, next_token_sample
from bico.paths import GENERIC_PROMPTS, RETENTION_DIR

logger = logging.getLogger(__name__)

PROSE_RUN = 8  # words in a row shared with the prose sample that make a sample contaminated
SAMPLE_BATCH = 32


class ReplayError(BicoError, ValueError):
    """Replay text cannot be made or read; the message says what to change."""


def start_token(tokenizer) -> int:
    """The token every replay row begins with, so that its first text token is a target too: the
    document separator where the vocabulary has one (SmolLM2's ``<|endoftext|>``), else EOS."""
    tid = tokenizer.get_vocab().get("<|endoftext|>")
    return tid if tid is not None else tokenizer.eos_token_id


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class Contamination:
    """Whether a text contains a retention prompt or a run of the retention prose."""

    def __init__(self, folder: Path = RETENTION_DIR):
        rows = [json.loads(line) for line in (folder / "knowledge.jsonl").read_text().splitlines() if line.strip()]
        self.prompts = [" ".join(_words(r["prompt"])) for r in rows]
        prose = _words((folder / "prose.txt").read_text(encoding="utf-8"))
        self.runs = {tuple(prose[i : i + PROSE_RUN]) for i in range(len(prose) - PROSE_RUN + 1)}

    def __call__(self, text: str) -> bool:
        words = _words(text)
        joined = " " + " ".join(words) + " "
        if any(f" {p} " in joined for p in self.prompts):
            return True
        return any(tuple(words[i : i + PROSE_RUN]) in self.runs for i in range(len(words) - PROSE_RUN + 1))


def _self_key(recipe) -> str:
    from bico.models import model_identity

    model = model_identity(recipe.model)
    cfg = recipe.replay
    settings = {k: getattr(cfg, k) for k in ("samples", "length", "temperature", "top_p", "seed")}
    if cfg.prompts != "none":  # absent otherwise, so the caches made before the option stay valid
        settings["prompts"] = read_prompts(cfg.prompts)
    blob = json.dumps({"model": model, "settings": settings, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_prompts(spec: str) -> list[str]:
    """The openings ``replay.prompts`` names: ``generic`` (shipped) or a .txt file, one per line,
    blank and ``#`` lines skipped; [] for ``none``."""
    if spec == "none":
        return []
    path = GENERIC_PROMPTS if spec == "generic" else Path(spec).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ReplayError(
            f"replay.prompts {spec}: cannot read it ({e.strerror}); give a .txt file, or none or generic"
        ) from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ReplayError(f"replay.prompts {spec}: no opening in it; write one per line")
    return prompts


def _sampling_jobs(samples: int, prompts: list[list[int]]):
    """(seed label, opening ids, how many) per generate call: samples spread evenly over the
    openings in order, at most SAMPLE_BATCH per call, each call its own seed."""
    if not prompts:
        for first in range(0, samples, SAMPLE_BATCH):
            yield str(first), [], min(SAMPLE_BATCH, samples - first)
        return
    counts = [samples // len(prompts) + (i < samples % len(prompts)) for i in range(len(prompts))]
    for p, (ids, count) in enumerate(zip(prompts, counts)):
        for first in range(0, count, SAMPLE_BATCH):
            yield f"p{p}-{first}", ids, min(SAMPLE_BATCH, count - first)


@torch.no_grad()
def sample_from_model(
    model,
    tokenizer,
    *,
    samples: int,
    length: int,
    temperature: float,
    top_p: float,
    seed: int,
    prompts: Sequence[str] = (),
    progress: bool = False,
) -> list[list[int]]:
    """``samples`` token sequences sampled from ``model`` after its start token and, with
    ``prompts``, an opening (start token and opening included, cut at the first EOS; ``length``
    tokens sampled after the opening)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    start, eos = start_token(tokenizer), tokenizer.eos_token_id
    opening_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    out: list[list[int]] = []
    jobs = list(_sampling_jobs(samples, opening_ids))
    for label, opening, n in tqdm(jobs, desc="replay: sampling", disable=not progress, leave=False):
        torch.manual_seed(random.Random(f"replay-{seed}-{label}").getrandbits(63))
        ids = torch.tensor([[start] + opening] * n, dtype=torch.long, device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=length,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        for row in generated.tolist():
            body = row[1 + len(opening) :]
            if eos in body:
                body = body[: body.index(eos)]
            out.append([start] + opening + body)
    return out


def _self_samples(recipe, data_dir, progress: bool) -> list[list[int]]:
    from bico.io_utils import atomic_write
    from bico.models import load_model
    from bico.paths import cache_dir

    cfg = recipe.replay
    path = cache_dir() / "replay" / f"{_self_key(recipe)}.jsonl"
    if path.is_file():
        try:
            return [json.loads(line)["ids"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (ValueError, KeyError):
            pass  # a damaged entry is sampled again
    began = time.time()
    model, tokenizer = load_model(recipe.model, data_dir=data_dir)
    model.eval()
    seqs = sample_from_model(
        model,
        tokenizer,
        samples=cfg.samples,
        length=cfg.length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        prompts=read_prompts(cfg.prompts),
        progress=progress,
    )
    lines = [json.dumps({"text": tokenizer.decode(s[1:]), "ids": s}) for s in seqs]
    atomic_write(path, "\n".join(lines) + "\n")
    logger.info(
        "replay: sampled %d texts of <= %d tokens from %s (openings: %s) in %.1f s -> %s",
        len(seqs),
        cfg.length,
        recipe.model.name,
        cfg.prompts,
        time.time() - began,
        path,
    )
    del model
    return seqs


def _file_samples(path: Path, tokenizer, length: int) -> list[list[int]]:
    if not path.is_file():
        raise ReplayError(f"replay.source {path}: no such file; give a .txt or .jsonl file, or replay.source=self")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            docs = [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
        except (ValueError, KeyError, TypeError):
            raise ReplayError(f"replay.source {path}: every line must be a JSON object with a 'text' field") from None
    elif path.suffix == ".txt":
        docs = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
    else:
        raise ReplayError(f"replay.source {path}: use a .txt or .jsonl file")
    start, out = start_token(tokenizer), []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False).input_ids
        out += [[start] + ids[i : i + length] for i in range(0, len(ids), length)]
    return out


TOPK_BATCH = 16


@torch.no_grad()
def base_topk(model, seqs: list[list[int]], k: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence, the model's ``k`` most likely next tokens at positions 0..L-2 (ids int32,
    log-probabilities fp16 over the whole vocabulary), i.e. what it predicts for tokens 1..L-1."""
    device = next(model.parameters()).device
    out = []
    for first in range(0, len(seqs), TOPK_BATCH):
        chunk = seqs[first : first + TOPK_BATCH]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(chunk):
            ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        values, indices = logp.topk(k, dim=-1)
        for i, seq in enumerate(chunk):
            n = len(seq) - 1
            out.append((indices[i, :n].to(torch.int32).cpu(), values[i, :n].to(torch.float16).cpu()))
    return out


def _topk_cached(recipe, data_dir, seqs: list[list[int]], pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from bico.io_utils import atomic_write
    from bico.models import load_model, model_identity
    from bico.paths import cache_dir

    k = recipe.replay.top_k
    digest = hashlib.sha256(json.dumps([model_identity(recipe.model), seqs, k]).encode()).hexdigest()[:24]
    path = cache_dir() / "replay" / f"{digest}-top{k}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)  # plain tensors: nothing in the file runs
            return list(zip(saved["ids"], saved["logp"]))
        except Exception:  # noqa: BLE001 - a damaged cache entry is computed again
            pass
    began = time.time()
    model, _ = load_model(recipe.model, data_dir=data_dir)
    model.eval()
    topk = base_topk(model, seqs, k, pad_id)
    import io

    buffer = io.BytesIO()
    torch.save({"ids": [a for a, _ in topk], "logp": [b for _, b in topk]}, buffer)
    atomic_write(path, buffer.getvalue())
    logger.info(
        "replay: the base model's top-%d next tokens at %d positions in %.1f s -> %s",
        k,
        sum(len(a) for a, _ in topk),
        time.time() - began,
        path,
    )
    return topk


def kl_to_base(logits: torch.Tensor, base_ids: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """Sum over positions of KL(base || tuned) over k+1 outcomes: the base's top-k tokens and
    "any other token" (both models' remaining mass). A true KL of the coarsened distributions:
    >= 0, zero where the tuned model matches the base on the top-k, and never rewarding a model
    that moves the rest of its mass onto the top-k. ``logits`` [N, V]; ``base_*`` [N, k]."""
    logq = torch.log_softmax(logits.float(), dim=-1).gather(-1, base_ids.long())
    logp = base_logp.float()
    p = logp.exp()
    p_rest = (1 - p.sum(-1)).clamp(min=0)
    q_rest_log = torch.log1p(-torch.logsumexp(logq, -1).exp().clamp(max=1 - 1e-6))
    rest = torch.where(p_rest > 0, p_rest * (torch.log(p_rest.clamp(min=1e-30)) - q_rest_log), torch.zeros_like(p_rest))
    return (p * (logp - logq)).sum() + rest.sum()


def load_replay(recipe, tokenizer, data_dir=None, progress: bool = False) -> list[Example]:
    """The replay texts as examples (prompt = the start token, completion = the text, no EOS),
    contaminated ones dropped; with ``replay.loss: kl`` each carries the base model's top-k next
    tokens in ``meta["base_topk"]``."""
    cfg = recipe.replay
    if cfg.source == "self":
        seqs = _self_samples(recipe, data_dir, progress)
    else:
        seqs = _file_samples(Path(cfg.source).expanduser(), tokenizer, cfg.length)
    check = Contamination()
    kept, dropped = [], 0
    for ids in seqs:
        if len(ids) < 2:
            continue
        if check(tokenizer.decode(ids[1:])):
            dropped += 1
            continue
        kept.append(Example("", "", ids[:1], ids[1:], eos=False))
    if kept and cfg.loss == "kl":
        topk = _topk_cached(recipe, data_dir, [e.prompt_ids + e.completion_ids for e in kept], tokenizer.pad_token_id)
        kept = [
            Example(e.prompt, e.completion, e.prompt_ids, e.completion_ids, {"base_topk": t}, eos=False)
            for e, t in zip(kept, topk)
        ]
    if not kept:
        raise ReplayError(f"replay.source {cfg.source}: no usable text ({dropped} dropped as retention-set text)")
    logger.info(
        "replay: %d texts (%d tokens), %d dropped as retention-set text; %d rows per micro-batch, weight %g",
        len(kept),
        sum(len(e.completion_ids) for e in kept),
        dropped,
        cfg.rows,
        cfg.weight,
    )
    return kept


def replay_batch(examples: list[Example], rows: int, seed: int, step: int, micro: int, pad_id: int, pack: bool) -> dict:
    """The replay rows of one micro-batch: causal next-token samples, loss on every text token.
    Examples with the base's top-k add ``base_ids``/``base_logp`` ``[B, T, k]`` (rows not packed,
    so that row i position t is the text's position t)."""
    rng = random.Random(f"replay-{seed}-{step}-{micro}")
    chosen = [examples[rng.randrange(len(examples))] for _ in range(rows)]
    samples = [next_token_sample(e.prompt_ids + e.completion_ids) for e in chosen]
    soft = "base_topk" in chosen[0].meta
    batch = collate(samples, pad_id, pack=pack and not soft, max_length=max(len(s) for s in samples))
    if soft:
        width, k = batch["input_ids"].shape[1], chosen[0].meta["base_topk"][0].shape[1]
        batch["base_ids"] = torch.zeros(rows, width, k, dtype=torch.int32)
        batch["base_logp"] = torch.full((rows, width, k), -float("inf"), dtype=torch.float16)
        for i, e in enumerate(chosen):
            ids, logp = e.meta["base_topk"]
            batch["base_ids"][i, : len(ids)], batch["base_logp"][i, : len(ids)] = ids, logp
    return batch
