"""The machine a measurement ran on, in the fields `moco bench` writes (its `machine`)."""
import datetime
import os
import platform


def cpu_model():
    """The CPU model as /proc/cpuinfo names it, else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd():
    """The widest vector instruction set the matrix kernels use, as `moco bench` names it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    if flags:
        return "sse2"
    return "neon" if platform.machine() in ("aarch64", "arm64") else platform.machine()


def available_threads():
    """The hardware threads this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine(threads=None, **extra):
    """CPU model, threads, date (UTC) and whatever the caller adds (library versions)."""
    return {
        "cpu": cpu_model(),
        "simd": simd(),
        "cores": threads or available_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }
