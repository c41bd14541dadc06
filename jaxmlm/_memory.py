"""Chunk sizes from the memory the machine has.

Work over many items (responses of a batch, bootstrap samples, posterior draws) runs in chunks whose working set
stays within a share of the memory available now: the smallest of the host's available memory (MemAvailable in
/proc/meminfo, else the free physical pages), a container's limit (cgroup v2 or v1), and, when JAX runs on an
accelerator, that device's free memory. JAXMLM_MEMORY_BYTES sets the amount by hand (for tests, or to leave room
for other work); every caller also takes an explicit chunk size that overrides all of this.
"""

from __future__ import annotations

import os

__all__ = ["available_bytes", "chunk_size", "check_fits_in_memory"]

_FALLBACK_BYTES = 4 * 2**30  # when the platform tells nothing
# The share of available memory one chunk's working set may take: the estimates per item are rough (XLA's
# temporaries, NumPy copies), several chunks may run at once on worker threads, and the caller's own arrays
# (the responses, the results) live beside them.
DEFAULT_FRACTION = 0.25


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) reads as None


def _cgroup_available() -> int | None:
    """A container's memory limit less what it uses (cgroup v2, else v1); None without a limit."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(limit_path)
        if limit is not None and limit < 2**60:  # v1 reports "no limit" as a huge number
            usage = _read_int(usage_path) or 0
            return max(limit - usage, 0)
    return None


def _device_available() -> int | None:
    """Free memory of JAX's default device when it is an accelerator (its statistics, where it reports them)."""
    try:
        import jax

        if jax.default_backend() == "cpu":
            return None
        stats = jax.devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else max(int(limit) - int(stats.get("bytes_in_use", 0)), 0)
    except Exception:  # a backend without statistics: the host's figures stand
        return None


def available_bytes() -> int:
    """Bytes of memory available to this process now (see the module docstring)."""
    override = os.environ.get("JAXMLM_MEMORY_BYTES")
    if override:
        try:
            value = int(float(override))
        except ValueError:
            raise ValueError(f"JAXMLM_MEMORY_BYTES must be a number of bytes, got {override!r}") from None
        if value <= 0:
            raise ValueError(f"JAXMLM_MEMORY_BYTES must be positive, got {override!r}")
        return value
    host = _meminfo_available() or _sysconf_available() or _FALLBACK_BYTES
    found = [v for v in (host, _cgroup_available(), _device_available()) if v is not None]
    return max(min(found), 1)


def chunk_size(n_items: int, bytes_per_item: float, *, override=None, maximum: int | None = None,
               fraction: float = DEFAULT_FRACTION, name: str = "chunk_size") -> int:
    """Items per chunk: `override` when given (a positive integer), else as many as fit in `fraction` of the
    available memory at `bytes_per_item` each, at most `maximum` and `n_items`, at least 1."""
    if override is not None:
        if isinstance(override, bool) or int(override) != override or override < 1:
            raise ValueError(f"{name} must be a positive integer, got {override!r}")
        return int(override)
    fitting = int(fraction * available_bytes() // max(float(bytes_per_item), 1.0))
    size = max(1, min(fitting, max(int(n_items), 1)))
    return size if maximum is None else max(1, min(size, int(maximum)))


def check_fits_in_memory(n_bytes: float, what: str, advice: str) -> None:
    """Refuse, before allocating it, a result that cannot fit in the available memory."""
    available = available_bytes()
    if n_bytes > available:
        raise MemoryError(f"{what} needs {n_bytes / 2**30:.3g} GiB, more than the {available / 2**30:.3g} GiB "
                          f"available; {advice}")
