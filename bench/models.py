"""Real client models: Hugging Face `transformers` architectures built from small configs
(random weights, nothing downloaded), each compiled by the default optimized pipeline,
checked against eager (rtol 1e-4, atol 1e-5, f32) and timed against it at 1 thread.

BERT and RoBERTa encoders, a Llama decoder (rotary embeddings, grouped-query attention,
RMSNorm, SiLU gating), a T5 encoder, a ViT encoder (3 heads over 197 tokens), a ConvNeXt,
and a Whisper encoder (a conv1d stem over mel frames). Prints one row per model: compile
seconds, correctness, eager and Tilecraft medians (interleaved rounds, medians of their
medians) and the ratio; a model that fails prints its one-line error.

    python bench/models.py [--models bert,llama] [--json bench/results/models.json]
    python bench/models.py --quick        # bert alone, fewer rounds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch
from e2e import median_ms  # bench/ is on sys.path when run as a script

from tilecraft import driver, frontend


class LastHidden(torch.nn.Module):
    """A transformers model called with one tensor, returning its last hidden state."""

    def __init__(self, model: torch.nn.Module, arg: str):
        super().__init__()
        self.model, self.arg = model, arg

    def forward(self, x):
        return self.model(**{self.arg: x}).last_hidden_state


def _ids(n: int = 32, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


def bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=128, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
    return LastHidden(BertModel(cfg), "input_ids"), (_ids(),)


def roberta():
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(
        vocab_size=128, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    )
    return LastHidden(RobertaModel(cfg), "input_ids"), (_ids() + 2,)


def llama():
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=344,
    )
    return LastHidden(LlamaModel(cfg), "input_ids"), (_ids(),)


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=128, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4)
    return LastHidden(T5EncoderModel(cfg), "input_ids"), (_ids(),)


def vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=768,
    )
    return LastHidden(ViTModel(cfg, add_pooling_layer=False), "pixel_values"), (torch.randn(1, 3, 224, 224),)


def convnext():
    from transformers import ConvNextConfig, ConvNextModel

    cfg = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], image_size=64)
    return LastHidden(ConvNextModel(cfg), "pixel_values"), (torch.randn(1, 3, 64, 64),)


def whisper_encoder():
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(
        d_model=128,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=512,
        num_mel_bins=32,
        max_source_positions=64,
        decoder_layers=1,
        decoder_attention_heads=4,
    )
    return LastHidden(WhisperModel(cfg).get_encoder(), "input_features"), (torch.randn(1, 32, 128),)


MODELS = {f.__name__: f for f in (bert, roberta, llama, t5_encoder, vit, convnext, whisper_encoder)}
QUICK = ("bert",)
RTOL, ATOL = 1e-4, 1e-5


def build(name: str):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    return model.eval(), inputs


def bench_one(name: str, *, rounds: int, runs: int) -> dict:
    model, inputs = build(name)
    row: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        imported = frontend.import_module(model, inputs, spec=name)
        compiled = driver.compile_model(imported)
    except Exception as exc:  # the bench reports every model, compiled or not
        row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return row
    row["compile_s"] = time.perf_counter() - t0
    fn = compiled.fn
    with torch.no_grad():
        ref = model(*inputs)
        row["correct"] = driver.compare(fn(*inputs), ref, rtol=RTOL, atol=ATOL).ok
        eager, ours = [], []
        for _ in range(rounds):  # interleaved: drift hits both alike
            eager.append(median_ms(lambda: model(*inputs), runs))
            ours.append(median_ms(lambda: fn(*inputs), runs))
    row["eager_ms"], row["tilecraft_ms"] = statistics.median(eager), statistics.median(ours)
    row["speedup"] = row["eager_ms"] / row["tilecraft_ms"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    names = list(QUICK) if args.quick else [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r} (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    rounds, runs = (2, 5) if args.quick else (5, 15)
    rows = []
    print(f"{'model':<18}{'compile s':>10}{'correct':>9}{'eager ms':>10}{'ours ms':>10}{'speedup':>9}")
    for name in names:
        r = bench_one(name, rounds=rounds, runs=runs)
        rows.append(r)
        if "error" in r:
            print(f"{name:<18}  error: {r['error']}")
            continue
        print(
            f"{name:<18}{r['compile_s']:>10.1f}{'yes' if r['correct'] else 'NO':>9}{r['eager_ms']:>10.3f}"
            f"{r['tilecraft_ms']:>10.3f}{r['speedup']:>9.2f}"
        )
    ok = [r for r in rows if r.get("correct")]
    if ok:
        print(f"geomean speedup   {math.exp(statistics.mean(math.log(r['speedup']) for r in ok)):.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
