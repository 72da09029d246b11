"""A jina-reranker-v3 checkpoint directory: its config, weights and tokenizer, validated."""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.errors import CheckpointError
from reranker.errors import ModelFileError
from reranker.gguf_metadata import MAX_LAYERS
from reranker.safetensors_file import TensorEntry, read_header
from reranker.model_format import PROJECTOR_TENSORS

ARCHITECTURE_NAME = "JinaForRanking"
REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "intermediate_size", "rms_norm_eps",
                   "rope_theta", "vocab_size")
_INDEX_NAME = "model.safetensors.index.json"
_UINT32_MAX = 2**32 - 1  # GGUF stores every count and size as a uint32
_LAYER_PREFIX = re.compile(r"model\.layers\.(\d+)\.")


def _positive_int(config: dict, key: str, path: Path, default: int | None = None, *,
                  maximum: int = _UINT32_MAX, limit: str = "GGUF stores it as a uint32") -> int:
    # Counts and sizes: 0 divides by zero, a negative or fractional one makes nonsense
    # shapes, and a string or null would fail far from the file that holds it.
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: {key} is {json.dumps(value)}; expected a positive "
                              "integer")
    if value > maximum:
        raise CheckpointError(f"{path}: {key} is {value}; expected at most {maximum} "
                              f"({limit})")
    return value


def _positive_number(config: dict, key: str, path: Path) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{path}: {key} is {json.dumps(value)}; expected a positive "
                              "number")
    # GGUF stores it as a float32, where 1e-50 becomes 0 and 1e300 infinity: llama.cpp
    # and the runtime refuse both, so the file written would be unusable.
    with np.errstate(over="ignore", under="ignore"):
        stored = float(np.float32(value))
    if not math.isfinite(stored) or stored <= 0:
        raise CheckpointError(f"{path}: {key} is {json.dumps(value)}; GGUF stores it as a "
                              f"float32, where it becomes {stored}; give a positive number "
                              "within float32's range (about 1.4e-45 to 3.4e38)")
    return float(value)


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int

    @classmethod
    def from_config(cls, config: dict, path: Path) -> ModelShape:
        missing = [k for k in REQUIRED_CONFIG if k not in config]
        if missing:
            raise CheckpointError(f"{path}: missing {', '.join(missing)}")
        hidden, heads = _positive_int(config, "hidden_size", path), _positive_int(
            config, "num_attention_heads", path)
        kv_heads = _positive_int(config, "num_key_value_heads", path)
        if heads % kv_heads:
            raise CheckpointError(f"{path}: num_attention_heads ({heads}) is not a multiple of "
                                  f"num_key_value_heads ({kv_heads})")
        if config.get("head_dim") is not None:
            head_dim = _positive_int(config, "head_dim", path)
        elif hidden % heads:
            raise CheckpointError(f"{path}: hidden_size ({hidden}) is not a multiple of "
                                  f"num_attention_heads ({heads}) and no head_dim is given")
        else:
            head_dim = hidden // heads
        return cls(
            hidden_size=hidden,
            layers=_positive_int(config, "num_hidden_layers", path, maximum=MAX_LAYERS,
                                 limit="llama.cpp's limit"),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=_positive_int(config, "intermediate_size", path),
            vocab_size=_positive_int(config, "vocab_size", path),
            rms_norm_eps=_positive_number(config, "rms_norm_eps", path),
            rope_theta=_positive_number(config, "rope_theta", path),
            context_length=_positive_int(config, "max_position_embeddings", path, 40960),
        )

    def expected_tensors(self, projector: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Every tensor the checkpoint must hold, with its [out, in] shape."""
        q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, f = self.hidden_size, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, h),
            "model.norm.weight": (h,),
        }
        for i in range(self.layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q_dim, h),
                p + "self_attn.k_proj.weight": (kv_dim, h),
                p + "self_attn.v_proj.weight": (kv_dim, h),
                p + "self_attn.o_proj.weight": (h, q_dim),
                p + "self_attn.q_norm.weight": (self.head_dim,),
                p + "self_attn.k_norm.weight": (self.head_dim,),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
            })
        shapes.update(projector)
        return shapes


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    config: dict
    shape: ModelShape
    tensors: dict[str, TensorEntry]
    weight_files: tuple[Path, ...]
    tokenizer_json: Path

    @property
    def projector_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(self.tensors[name].shape for name in PROJECTOR_TENSORS)

    @property
    def source_files(self) -> tuple[Path, ...]:
        """Every file the conversion reads, shards in subfolders included: none may be its
        output."""
        index = self.directory / _INDEX_NAME
        return (self.directory / "config.json", self.tokenizer_json, *self.weight_files,
                *([index] if index.is_file() else []))

    @property
    def source_dtype(self) -> str:
        """The widest dtype among the weights: what a lossless intermediate needs."""
        dtypes = {entry.dtype for entry in self.tensors.values()}
        for dtype in ("F32", "F16", "BF16"):
            if dtype in dtypes:
                return dtype
        return "BF16"

    def weights_sha256(self) -> str:
        """One digest over the weight files, read in name order."""
        digest = hashlib.sha256()
        for path in self.weight_files:
            with open(path, "rb") as f:
                while chunk := f.read(16 * 1024 * 1024):
                    digest.update(chunk)
        return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _weight_files(directory: Path) -> list[Path]:
    index = directory / _INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map \
                or not all(isinstance(name, str) for name in weight_map.values()):
            raise CheckpointError(f"{index}: no weight_map of tensor names to file names")
        files = sorted({directory / name for name in weight_map.values()})
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{path} is listed in {index.name} but missing")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(
        f"{directory}: no model.safetensors or model.safetensors.index.json; "
        "expected a jina-reranker-v3 checkpoint directory")


def _check_settings_written(config: dict, path: Path) -> None:
    """Refuse settings the GGUF cannot carry: dropping them would change the model silently."""
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):  # the string "false" is truthy
        raise CheckpointError(f"{path}: tie_word_embeddings is {json.dumps(tied)}; expected "
                              "true or false (a JSON boolean)")
    if not tied:
        raise CheckpointError(f"{path}: tie_word_embeddings is false; jina-reranker-v3 ties them")
    # The GGUF holds only qwen3.rope.freq_base, and llama.cpp's qwen3 attends over the
    # whole context: a model trained otherwise would see different positions or context.
    if config.get("rope_scaling") is not None:
        raise CheckpointError(
            f"{path}: rope_scaling is {json.dumps(config['rope_scaling'])}; this converter "
            "writes no rope scaling (jina-reranker-v3 has rope_scaling null)")
    if config.get("use_sliding_window") not in (None, False):
        raise CheckpointError(
            f"{path}: use_sliding_window is {json.dumps(config['use_sliding_window'])}; this "
            "converter writes no sliding window (jina-reranker-v3 has use_sliding_window false)")
    name = config.get("_name_or_path")
    if name is not None and not isinstance(name, str):  # the GGUF's general.name
        raise CheckpointError(f"{path}: _name_or_path is {json.dumps(name)}; expected a string")


def load_checkpoint(directory: Path) -> Checkpoint:
    """Read and check a checkpoint directory; tensor data stays on disk."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory}: no config.json; expected a jina-reranker-v3 checkpoint directory")
    config = _read_json(config_path)
    architectures = config.get("architectures") or []
    # A string would pass the membership test as a substring.
    if (not isinstance(architectures, list) or ARCHITECTURE_NAME not in architectures
            or config.get("model_type") != "qwen3"):
        raise CheckpointError(
            f"{config_path}: architectures {architectures} / model_type "
            f"{config.get('model_type')!r}; expected ['{ARCHITECTURE_NAME}'] / 'qwen3' "
            "(jina-reranker-v3)")
    shape = ModelShape.from_config(config, config_path)
    _check_settings_written(config, config_path)

    files = _weight_files(directory)
    tensors: dict[str, TensorEntry] = {}
    for path in files:
        try:
            header = read_header(path)
        except ModelFileError as e:
            raise CheckpointError(str(e)) from e
        for name, entry in header.items():
            if name in tensors:
                raise CheckpointError(f"tensor {name} appears in both {tensors[name].file} and {path}")
            tensors[name] = entry

    # Before expected_tensors builds 11 names a layer: a config meant for another model
    # is named as such, not as a missing tensor of its first absent layer.
    layers_held = {int(match[1]) for name in tensors if (match := _LAYER_PREFIX.match(name))}
    if shape.layers > len(layers_held):
        raise CheckpointError(
            f"{config_path}: num_hidden_layers is {shape.layers} but the weights hold "
            f"{len(layers_held)} layers; the config does not belong to these weights")

    projector = {}
    for name in PROJECTOR_TENSORS:
        if name not in tensors or len(tensors[name].shape) != 2:
            raise CheckpointError(f"{directory}: tensor {name} (2-D) is missing; "
                                  "expected the reranker's projector")
        projector[name] = tensors[name].shape
    first, second = (projector[n] for n in PROJECTOR_TENSORS)
    if first[1] != shape.hidden_size or second[1] != first[0]:
        raise CheckpointError(
            f"{directory}: projector shapes {list(first)} and {list(second)} do not chain "
            f"from hidden size {shape.hidden_size}")

    expected = shape.expected_tensors(projector)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{directory}: tensor {missing[0]} is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{directory}: unexpected tensor {extra[0]} in {tensors[extra[0]].file.name}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for name, want in expected.items():
        if tensors[name].shape != want:
            raise CheckpointError(f"{tensors[name].file}: tensor {name} has shape "
                                  f"{list(tensors[name].shape)}; expected {list(want)}")

    tokenizer_json = directory / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise CheckpointError(f"{tokenizer_json} is missing")
    return Checkpoint(directory, config, shape, tensors, tuple(files), tokenizer_json)
