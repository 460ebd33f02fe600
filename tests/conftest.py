"""Test setup: 8 simulated CPU devices for multi-device tests, CPU only.

Compiled programs go to a persistent cache in the checkout (``.jax_cache/``, not tracked), shared
by both pytest workers and every CLI subprocess (they inherit the environment): the suite
compiles the same small models many times, in many processes, and a clean checkout starts with
an empty cache.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
