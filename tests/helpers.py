"""Helpers shared by the tests that run the command line in a subprocess."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name: str) -> str:
    """``configs/<name>.py`` as an absolute path."""
    return os.path.join(ROOT, "configs", f"{name}.py")


def cli(*args, devices: int = 1, timeout: float = 600, env: dict | None = None, **kw):
    """Runs ``python -m jaxopt_ft.cli ARGS`` on ``devices`` simulated CPU devices."""
    flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    full_env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "jaxopt_ft.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
        **kw,
    )


def one_error_line(result) -> str:
    """Asserts exit code 2 with exactly one ``jaxopt-ft: error:`` line on stderr; returns it."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("jaxopt-ft: error:")
    return lines[0]


def load_config(path: str, arg=None, overrides: dict | None = None):
    """``get_config(arg)`` of a config file, then ``{"a.b.c": value}`` overrides set on it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config
