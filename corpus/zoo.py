"""Model zoo: small, pure-PyTorch models that exercise every op family Tilecraft compiles.

On the corpus floor, though it sits at the very start of the flow: `compiler/frontend.py`
resolves a zoo name to `(module, example_inputs)` through `get(name)`. Nothing here reads
or writes files; every model is built with a fixed seed so weights and inputs are
deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self, dims=(256, 512, 512, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# ---------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# ------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expand, channels, repeats, stride) as in the paper
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes=1000):
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.mean((2, 3)))


# ---------------------------------------------------------------------- Transformers
class SelfAttention(nn.Module):
    def __init__(self, d, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        b, s, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.reshape(b, s, h, d // h).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d // h)
        if self.causal:
            mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
            scores = scores.masked_fill(mask, float("-inf"))
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class TransformerLayer(nn.Module):
    """Post-norm (BERT) or pre-norm (GPT-2) layer with a GELU feed-forward."""

    def __init__(self, d, heads, causal, pre_norm):
        super().__init__()
        self.attn = SelfAttention(d, heads, causal)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.pre_norm = pre_norm

    def ff(self, x):
        return self.ff2(F.gelu(self.ff1(x)))

    def forward(self, x):
        if self.pre_norm:
            x = x + self.attn(self.ln1(x))
            return x + self.ff(self.ln2(x))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.ff(x))


class BertMini(nn.Module):
    def __init__(self, layers=4, d=256, heads=4, vocab=1024, seq=128):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.ln = nn.LayerNorm(d)
        self.layers = nn.ModuleList(TransformerLayer(d, heads, causal=False, pre_norm=False) for _ in range(layers))

    def forward(self, ids):
        x = self.ln(self.tok(ids) + self.pos)
        for layer in self.layers:
            x = layer(x)
        return x


class GPT2Blocks(nn.Module):
    def __init__(self, layers=2, d=256, heads=4):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(d, heads, causal=True, pre_norm=True) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.ln_f(x)


# --------------------------------------------------------------- conv encoder-decoder
class ConvEncoderDecoder(nn.Module):
    """A small U-Net-like autoencoder: strided convs down, nearest upsampling + convs up."""

    def __init__(self, c=16):
        super().__init__()
        self.e1 = nn.Conv2d(3, c, 3, 1, 1)
        self.e2 = nn.Conv2d(c, 2 * c, 3, 2, 1)
        self.e3 = nn.Conv2d(2 * c, 4 * c, 3, 2, 1)
        self.d2 = nn.Conv2d(4 * c, 2 * c, 3, 1, 1)
        self.d1 = nn.Conv2d(4 * c, c, 3, 1, 1)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        a = F.relu(self.e1(x))
        b = F.relu(self.e2(a))
        z = F.relu(self.e3(b))
        y = F.relu(self.d2(F.interpolate(z, scale_factor=2.0, mode="nearest")))
        y = torch.cat([y, b], 1)
        y = F.relu(self.d1(y))
        y = F.interpolate(y, scale_factor=2.0, mode="nearest") + a
        return torch.sigmoid(self.head(y))


def _mlp():
    return MLP(), (torch.randn(32, 256),)


def _resnet18():
    return ResNet18(), (torch.randn(1, 3, 224, 224),)


def _mobilenet_v2():
    return MobileNetV2(), (torch.randn(1, 3, 224, 224),)


def _bert_mini():
    return BertMini(), (torch.randint(0, 1024, (1, 128)),)


def _gpt2_block():
    return GPT2Blocks(), (torch.randn(1, 128, 256),)


def _conv_autoencoder():
    return ConvEncoderDecoder(), (torch.randn(1, 3, 64, 64),)


ZOO: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "mlp": _mlp,
    "resnet18": _resnet18,
    "mobilenet_v2": _mobilenet_v2,
    "bert_mini": _bert_mini,
    "gpt2_block": _gpt2_block,
    "conv_autoencoder": _conv_autoencoder,
}


def get(name: str, *, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The zoo model `name` in eval mode with example inputs, deterministic for a seed."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r} (known: {', '.join(ZOO)})")
    torch.manual_seed(seed)
    model, inputs = ZOO[name]()
    _randomize_norm_stats(model)
    return model.eval(), inputs


def _randomize_norm_stats(model: nn.Module) -> None:
    """Give batch norms non-trivial running statistics so folding bugs can't hide."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
