"""Fictional residents for the demo back-ends, with GB 11643 resident ID numbers and masking.

Every person here is invented; the ID numbers are built from a region code, a birth date and a
sequence number and carry a valid GB 11643-1999 check character, so format checks pass, but
they are not meant to identify anyone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
RESIDENT_ID_PATTERN = re.compile(r"^[0-9]{17}[0-9X]$")


def resident_id_check_char(first17: str) -> str:
    """The GB 11643 check character (ISO 7064 MOD 11-2) for the first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need exactly 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def make_resident_id(region: str, birth: str, sequence: int) -> str:
    """Build an 18-character resident ID: 6-digit region, YYYYMMDD, 3-digit sequence, check."""
    first17 = f"{region}{birth}{sequence:03d}"
    return first17 + resident_id_check_char(first17)


def is_valid_resident_id(value: str) -> bool:
    """Whether ``value`` has the 18-character shape and a correct check character."""
    if not RESIDENT_ID_PATTERN.match(value):
        return False
    return resident_id_check_char(value[:17]) == value[17]


def mask_name(name: str) -> str:
    """张三丰 → 张**: the surname stays, the given name is hidden."""
    return name[:1] + "*" * max(len(name) - 1, 1)


def mask_id(value: str) -> str:
    """610113198503142131 → 6101**********2131."""
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


@dataclass(frozen=True, slots=True)
class Resident:
    """One invented citizen the demo back-ends know about."""

    key: str
    name: str
    id_number: str
    gender: str


# The region codes are real county-level codes (the birthplace part of an ID number); the
# people, dates and sequence numbers are invented.
MA_WENHUA = Resident("ma-wenhua", "马文华", make_resident_id("610113", "19850314", 213), "male")
HAN_XUEMEI = Resident("han-xuemei", "韩雪梅", make_resident_id("630104", "19900722", 128), "female")
ZHAO_YIMING = Resident("zhao-yiming", "赵一鸣", make_resident_id("610402", "19921105", 351), "male")
SU_LANXIN = Resident("su-lanxin", "苏兰心", make_resident_id("610102", "19980203", 46), "female")
DUAN_HAORAN = Resident("duan-haoran", "段浩然", make_resident_id("632123", "19780930", 175), "male")

RESIDENTS: tuple[Resident, ...] = (MA_WENHUA, HAN_XUEMEI, ZHAO_YIMING, SU_LANXIN, DUAN_HAORAN)
