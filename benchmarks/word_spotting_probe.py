"""Word-spotting probe: can the audio side learn which words a recording says, on new recordings?

    python benchmarks/word_spotting_probe.py data/shapes-quickstart 1000 --read embedder --train-on questions
    python benchmarks/word_spotting_probe.py data/shapes-quickstart 1000 --read tower --train-on captions

Trains only the quickstart model's audio embedder (and tower, with ``--read tower``) plus a
``WordSpotter`` on spoken training questions or captions, with ``word_presence_loss`` against
their transcripts, one thread. Every 100 steps it prints, on spoken *validation* questions
(new renditions of the training voices), how often the colour word the spotter scores
highest among the six colours is the one said (chance 1/6).

Measured 2026-11-29 (ShapesWorld quickstart: 58 question sentences x 8 training recordings):
- reading the tower (one attention layer over the whole utterance): the training loss falls
  (0.085 -> 0.015 by step 600 on questions; -> 0.06 by step 800 on 1,889 caption recordings)
  while validation colour accuracy stays at chance (0.12-0.21): recordings are memorised whole.
  Speed perturbation (--augment) did not change that in 500 steps.
- reading the embedder (stride-2 convolutions, a ~150 ms view per token): 0.54 at step 600,
  0.59-0.76 over steps 700-1,000 trained on questions; 0.61 at step 1,000 trained on captions.
Hence ``WordSpotter`` reads the audio embedder's tokens.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from omniformer.config import load_config
from omniformer.data.batching import MultimodalDataset, collate
from omniformer.data.shapes.scene import COLOURS
from omniformer.model import Omniformer, WordSpotter
from omniformer.objectives import word_presence_loss
from omniformer.tasks.common import audio_preprocessor, build_tokenizer, is_caption, is_qa, samples_by_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("steps", type=int)
    parser.add_argument("--read", choices=["embedder", "tower"], default="embedder")
    parser.add_argument("--train-on", choices=["questions", "captions"], default="questions")
    parser.add_argument("--augment", action="store_true", help="speed perturbation and SpecAugment in training")
    parser.add_argument("--lr", type=float, default=2e-3)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)

    cfg = load_config("configs/quickstart.yaml", overrides)
    manifest = f"{args.data_dir}/manifest.jsonl"
    tokenizer = build_tokenizer(cfg.data, samples_by_split(manifest)["train"])
    cfg.model.vocab_size = tokenizer.vocab_size
    questions = samples_by_split(manifest, is_qa)
    as_speech = lambda s: {"text": s["question"], "audio": s["question_audio"]}  # noqa: E731
    train = ([as_speech(s) for s in questions["train"] if s.get("question_audio")] if args.train_on == "questions"
             else [s for s in samples_by_split(manifest, is_caption)["train"] if s.get("audio")])
    val = [as_speech(s) for s in questions["val"] if s.get("question_audio")][:256]

    def dataset(samples, augment):
        return MultimodalDataset(manifest, samples, tokenizer=tokenizer, audio=audio_preprocessor(cfg.model, cfg.data if augment else None),
                                 text_max_len=cfg.model.text.max_len, modes="audio", transcripts=True)

    train_set, val_batch = dataset(train, args.augment), collate(list(dataset(val, False)))
    backbone = Omniformer(cfg.model)
    embedder, tower = backbone.embedders["audio"], backbone.towers["audio"]
    spotter = WordSpotter(cfg.model.width, tokenizer.vocab_size)
    params = [*embedder.parameters(), *spotter.parameters()] + (list(tower.parameters()) if args.read == "tower" else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    colours = torch.tensor([tokenizer.encode(c, 4)[1] for c in COLOURS])

    def heard(batch):
        frames, mask = embedder(batch)
        if args.read == "tower":
            frames = tower(frames, mask)
        return spotter(frames, mask)

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = collate([train_set[i] for i in random.sample(range(len(train_set)), 64)])
        loss = word_presence_loss(heard(batch), batch["transcript"], batch["transcript_mask"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():
                scores = heard(val_batch)[:, colours]
            said = (val_batch["transcript"][..., None] == colours).any(1)       # (B, colours)
            has_colour = said.any(1)
            accuracy = (scores.argmax(1) == said.float().argmax(1))[has_colour].float().mean()
            print(f"step {step}: train loss {loss.item():.4f}, validation colour-word accuracy {accuracy:.3f} "
                  f"({has_colour.sum()} questions), {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
