"""Decoding speed: Omniformer's ``generate()`` against Hugging Face ``generate`` on a model of the
same size, side by side in one run, both with a KV cache.

    python benchmarks/generate_speed.py [--threads 1] [--new-tokens 32] [--repeats 5] [--json F]

Both models are built locally from a config with seeded random weights (no download): a BART
encoder-decoder and Omniformer's encoder + ``TextDecoder`` of the same shape (3 + 3 layers,
256 wide, 4 heads, 1024 hidden, 8,000 tokens: the size of the Multi30k anchor). Every run
makes exactly ``--new-tokens`` tokens per row (the stop token is held back by
``min_new_tokens`` on both sides), from sources of 20 tokens, greedy and beam 4, batch 1 and
32. Tokens/s counts the new tokens of every row (beam search: of the returned sequence); each
figure is the best of ``--repeats`` runs, the two sides alternating, the encoder pass included on
both sides.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from common import cpu_model, write_json
from recognition import load_average, matmul_gflops

VOCAB, WIDTH, LAYERS, HEADS, HIDDEN, SOURCE = 8000, 256, 3, 4, 1024, 20
PAD, BOS, EOS = 1, 0, 2  # BART's ids, used on both sides


def hf_model():
    from transformers import BartConfig, BartForConditionalGeneration
    cfg = BartConfig(vocab_size=VOCAB, d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=LAYERS,
                     encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=HIDDEN,
                     decoder_ffn_dim=HIDDEN, max_position_embeddings=128, pad_token_id=PAD, bos_token_id=BOS,
                     eos_token_id=EOS, decoder_start_token_id=BOS, forced_bos_token_id=None,
                     forced_eos_token_id=None)
    torch.manual_seed(0)
    return BartForConditionalGeneration(cfg).eval()


def omniformer_model():
    from omniformer.model.decoder import TextDecoder
    from omniformer.model.fusion import init_weights
    from omniformer.model.transformer import Encoder
    torch.manual_seed(0)
    embed = torch.nn.Embedding(VOCAB, WIDTH, padding_idx=PAD)
    encoder = Encoder(LAYERS, WIDTH, HEADS, HIDDEN)
    decoder = TextDecoder(VOCAB, 128, LAYERS, WIDTH, HEADS, HIDDEN, pad_id=PAD, embedding=embed)
    for m in (encoder, decoder):
        m.apply(init_weights)
    return encoder.eval(), decoder.eval()


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``a`` and of ``b``, run alternately (a, b, a, b, ...) so that
    a burst of load on the shared cores hits both sides alike."""
    a(), b()  # warm-up
    best_a = best_b = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        best_a, best_b = min(best_a, t1 - t0), min(best_b, t2 - t1)
    return best_a, best_b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/generate_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from omniformer.model.generate import generate

    bart = hf_model()
    encoder, decoder = omniformer_model()
    n = args.new_tokens
    rows = []
    for batch in (1, 32):
        g = torch.Generator().manual_seed(batch)
        src = torch.randint(3, VOCAB, (batch, SOURCE), generator=g)
        src_mask = torch.ones_like(src, dtype=torch.bool)
        src_mask[batch // 2:, SOURCE // 2:] = False  # half the batch has shorter sources
        for beams in (1, 4):
            def ours():
                with torch.no_grad():
                    ctx = encoder(decoder.token(src), src_mask)
                    out = generate(decoder, ctx, src_mask, bos_id=BOS, stop_ids=[EOS], banned_ids=[PAD],
                                   num_beams=beams, max_new_tokens=n, min_new_tokens=n, length_penalty=1.0)
                assert all(len(o.tokens) == n for o in out)

            def theirs():
                with torch.no_grad():
                    out = bart.generate(input_ids=src, attention_mask=src_mask.long(), num_beams=beams,
                                        max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                        early_stopping=False, length_penalty=1.0)
                assert out.shape == (batch, n + 1), out.shape  # the start token and n new ones

            t_ours, t_hf = timed_pair(ours, theirs, args.repeats)
            row = {"batch": batch, "beams": beams, "new_tokens": n,
                   "omniformer_tokens_per_s": round(batch * n / t_ours, 1),
                   "hf_tokens_per_s": round(batch * n / t_hf, 1), "speedup": round(t_hf / t_ours, 2)}
            rows.append(row)
            print(f"batch {batch:>2} beams {beams}: omniformer {row['omniformer_tokens_per_s']:>8} tok/s   "
                  f"hf {row['hf_tokens_per_s']:>8} tok/s   x{row['speedup']}")
    import transformers
    write_json(args.json, {
        "rows": rows, "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
        "model": {"vocab": VOCAB, "width": WIDTH, "layers": f"{LAYERS}+{LAYERS}", "heads": HEADS, "hidden": HIDDEN,
                  "omniformer_parameters": sum(p.numel() for m in (encoder, decoder) for p in m.parameters()),
                  "hf_parameters": sum(p.numel() for p in bart.parameters())},
        "machine": platform.processor() or platform.machine(), "cpu": cpu_model(),
        "matmul_512_gflops_1_thread": round(matmul_gflops(1), 1), "cpus": os.cpu_count(), "load_average": load_average(),
    })


if __name__ == "__main__":
    main()
