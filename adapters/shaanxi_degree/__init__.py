"""Adapter for Shaanxi's degree-verification system (学历学位证书核验, scenario S6)."""

from adapters.shaanxi_degree.adapter import (
    ShaanxiDegreeAdapter,
    ShaanxiDegreeAdapterFactory,
    build_shaanxi_degree_adapter,
    unwrap_answer,
)

__all__ = [
    "ShaanxiDegreeAdapter",
    "ShaanxiDegreeAdapterFactory",
    "build_shaanxi_degree_adapter",
    "unwrap_answer",
]
