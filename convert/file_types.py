"""The output types the converter offers and how each is produced."""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType, LlamaFileType

from convert.errors import ConversionError


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: LlamaFileType
    # Written straight from numpy with this tensor type; None: llama.cpp's quantizer makes it.
    direct: GGMLQuantizationType | None = None
    needs_imatrix: bool = False


_TYPES = [
    FileType("f32", LlamaFileType.ALL_F32, GGMLQuantizationType.F32),
    FileType("f16", LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
    FileType("bf16", LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16),
    FileType("q8_0", LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    FileType("q6_k", LlamaFileType.MOSTLY_Q6_K),
    FileType("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M),
    FileType("q5_k_s", LlamaFileType.MOSTLY_Q5_K_S),
    FileType("q5_1", LlamaFileType.MOSTLY_Q5_1),
    FileType("q5_0", LlamaFileType.MOSTLY_Q5_0),
    FileType("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M),
    FileType("q4_k_s", LlamaFileType.MOSTLY_Q4_K_S),
    FileType("q4_1", LlamaFileType.MOSTLY_Q4_1),
    FileType("q4_0", LlamaFileType.MOSTLY_Q4_0),
    FileType("iq4_nl", LlamaFileType.MOSTLY_IQ4_NL),
    FileType("iq4_xs", LlamaFileType.MOSTLY_IQ4_XS),
    FileType("q3_k_l", LlamaFileType.MOSTLY_Q3_K_L),
    FileType("q3_k_m", LlamaFileType.MOSTLY_Q3_K_M),
    FileType("q3_k_s", LlamaFileType.MOSTLY_Q3_K_S),
    FileType("iq3_m", LlamaFileType.MOSTLY_IQ3_M),
    FileType("iq3_s", LlamaFileType.MOSTLY_IQ3_S),
    FileType("q2_k", LlamaFileType.MOSTLY_Q2_K),
    # llama.cpp's quantizer refuses these without an importance matrix.
    FileType("q2_k_s", LlamaFileType.MOSTLY_Q2_K_S, needs_imatrix=True),
    FileType("iq3_xs", LlamaFileType.MOSTLY_IQ3_XS, needs_imatrix=True),
    FileType("iq3_xxs", LlamaFileType.MOSTLY_IQ3_XXS, needs_imatrix=True),
    FileType("iq2_m", LlamaFileType.MOSTLY_IQ2_M, needs_imatrix=True),
    FileType("iq2_s", LlamaFileType.MOSTLY_IQ2_S, needs_imatrix=True),
    FileType("iq2_xs", LlamaFileType.MOSTLY_IQ2_XS, needs_imatrix=True),
    FileType("iq2_xxs", LlamaFileType.MOSTLY_IQ2_XXS, needs_imatrix=True),
    FileType("iq1_m", LlamaFileType.MOSTLY_IQ1_M, needs_imatrix=True),
    FileType("iq1_s", LlamaFileType.MOSTLY_IQ1_S, needs_imatrix=True),
]
FILE_TYPES: dict[str, FileType] = {t.name: t for t in _TYPES}
USABLE_TYPE_NAMES = [t.name for t in _TYPES if not t.needs_imatrix]


def file_type(name: str) -> FileType:
    """Look a type up by name (case-insensitive); refuse the ones needing an imatrix."""
    key = name.lower()
    if key not in FILE_TYPES:
        raise ConversionError(
            f"unknown output type {name!r}; choose one of {', '.join(USABLE_TYPE_NAMES)}")
    found = FILE_TYPES[key]
    if found.needs_imatrix:
        raise ConversionError(
            f"type {found.name} needs an importance matrix, which this converter does not "
            f"compute; choose q2_k or a larger type ({', '.join(USABLE_TYPE_NAMES)})")
    return found
