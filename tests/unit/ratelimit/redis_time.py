"""Moving time on for Redis rate-limit windows in tests.

The windows run on Redis's key expiry alone (no clock is read), so a test moves time on by
shortening every test key's TTL by the same amount (``AGE``). Jumps are whole hours plus
``OFF_EDGE_MS``: a jump of exactly whole hours can leave a counter's TTL exactly on a window's
edge, and then whether it has crossed depends on the milliseconds of real time since the key
was written, which differ between two key spaces compared with each other.
"""

from __future__ import annotations

from typing import Final

AGE: Final = """
for _, name in ipairs(redis.call('keys', ARGV[1])) do
    local ttl = redis.call('pttl', name)
    if ttl > 0 then
        if ttl - tonumber(ARGV[2]) <= 0 then
            redis.call('del', name)
        else
            redis.call('pexpire', name, ttl - tonumber(ARGV[2]))
        end
    end
end
return 1
"""
"""Move time on by ARGV[2] ms for every key matching ARGV[1]: each TTL that much shorter."""

HOUR_MS: Final = 3_600_000
OFF_EDGE_MS: Final = 500


def hours(n: int) -> int:
    """A jump of ``n`` hours, off the windows' edges (see the module docstring)."""
    return n * HOUR_MS + OFF_EDGE_MS
